/// The shape of a GPT model (nanoGPT's `GPTConfig`).
/// ```swift
/// let config = GPTConfig(contextLength: 128, layers: 4, dModel: 128, heads: 4)
/// try GPT.validate(config)
/// ```
public struct GPTConfig: Equatable, Sendable {
    /// Number of token ids (256 for the byte tokenizer).
    public var vocabSize: Int
    /// The longest sequence the model sees (number of position embeddings).
    public var contextLength: Int
    /// Number of Transformer blocks.
    public var layers: Int
    /// Width of the residual stream.
    public var dModel: Int
    /// Attention heads per block; must divide `dModel`.
    public var heads: Int
    /// Hidden width of each MLP.
    public var mlpHidden: Int
    /// Dropout probability on embeddings, attention probabilities and residual branches.
    public var dropout: Double
    /// Whether the output head reuses the token embedding (`logits = h · wteᵀ`), as GPT-2 does.
    public var tieEmbeddings: Bool
    /// GELU's tanh approximation (GPT-2) rather than the exact erf form.
    public var geluApproximate: Bool

    public init(vocabSize: Int = 256, contextLength: Int, layers: Int, dModel: Int, heads: Int,
                mlpHidden: Int? = nil, dropout: Double = 0, tieEmbeddings: Bool = true, geluApproximate: Bool = true) {
        self.vocabSize = vocabSize
        self.contextLength = contextLength
        self.layers = layers
        self.dModel = dModel
        self.heads = heads
        self.mlpHidden = mlpHidden ?? 4 * dModel
        self.dropout = dropout
        self.tieEmbeddings = tieEmbeddings
        self.geluApproximate = geluApproximate
    }
}

/// A GPT configuration that cannot build a model; `message` says which field and what to change.
/// ```swift
/// do { try GPT.validate(config) } catch let e as GPTConfigError { print(e.message) }
/// ```
public struct GPTConfigError: Error, Equatable, CustomStringConvertible {
    /// The offending field of `GPTConfig`.
    public let field: String
    public let message: String

    public init(field: String, _ message: String) {
        self.field = field
        self.message = message
    }

    public var description: String { message }
}
