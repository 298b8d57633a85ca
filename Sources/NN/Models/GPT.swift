import Tensors

/// A GPT-2 style decoder-only Transformer, readable top to bottom like its diagram:
/// ```text
/// ids [B, T] → wte(ids) + wpe(0..<T) → dropout → blocks[0..<L] → lnF → logits = h · wteᵀ [B, T, V]
/// ```
/// Parameters are named `wte.weight`, `wpe.weight`, `blocks.<i>.{ln1, attn.qkv, attn.proj, ln2,
/// mlp.fc1, mlp.fc2}.{weight, bias}`, `lnF.{weight, bias}`, and `lmHead.weight` only when the head is
/// not tied to `wte` (a tied head has no parameter of its own, so checkpoints hold `wte.weight` once).
///
/// Init is GPT-2's: every Linear and Embedding weight `N(0, 0.02)`, biases 0, the two residual
/// projections of each block (`attn.proj.weight`, `mlp.fc2.weight`) `N(0, 0.02/√(2·layers))`,
/// LayerNorm weights 1 and biases 0.
/// ```swift
/// var g = RandomGenerator(seed: 1337)
/// let model = GPT(GPTConfig(contextLength: 64, layers: 2, dModel: 64, heads: 4), generator: &g)
/// let loss = model.loss(ids: x, targets: y)   // x, y int32 [B, T]
/// loss.backward()
/// ```
public final class GPT: Module, @unchecked Sendable {
    public let config: GPTConfig
    /// Token embedding `[V, D]`; also the output head when `config.tieEmbeddings`.
    public let wte: Embedding
    /// Position embedding `[contextLength, D]`.
    public let wpe: Embedding
    public let drop: Dropout
    public let blocks: [TransformerBlock]
    public let lnF: LayerNorm
    /// The output head `D → V` (no bias) when embeddings are not tied; nil when they are.
    public let lmHead: Linear?
    /// The dtype the blocks compute in; nil = the parameters' dtype. `.bfloat16` is mixed precision
    /// (DESIGN.md, DTypes): the parameters stay float32 masters, the embedding sum is cast once, every
    /// `Linear` and `LayerNorm` casts its parameters to the activations' dtype, and `loss` casts the
    /// logits back to float32; gradients reach the float32 parameters through those casts.
    public var activationDType: DType?
    /// Those casts of a forward, made in one launch before it.
    private let castPlan = CastPlan()

    /// Builds a model with GPT-2's init; stops with the validation message if `config` is invalid
    /// (call `GPT.validate(_:)` first on a configuration from outside the program).
    public init(_ config: GPTConfig, device: Device = .cpu, dtype: DType = .float32, generator: inout RandomGenerator) {
        do { try GPT.validate(config) } catch { fatalError("GPT: \(error)") }
        self.config = config
        let std = 0.02
        let residualStd = std / Double(2 * config.layers).squareRoot()
        wte = Embedding(config.vocabSize, config.dModel, initStd: std, device: device, dtype: dtype, generator: &generator)
        wpe = Embedding(config.contextLength, config.dModel, initStd: std, device: device, dtype: dtype, generator: &generator)
        drop = Dropout(config.dropout, generator: &generator)
        blocks = (0..<config.layers).map { _ in
            TransformerBlock(config.dModel, heads: config.heads, mlpHidden: config.mlpHidden,
                             activation: .gelu(approximate: config.geluApproximate), dropout: config.dropout,
                             initStd: std, residualInitStd: residualStd, device: device, dtype: dtype, generator: &generator)
        }
        lnF = LayerNorm(config.dModel, device: device, dtype: dtype)
        lmHead = config.tieEmbeddings
            ? nil
            : Linear(config.dModel, config.vocabSize, bias: false, initStd: std, device: device, dtype: dtype, generator: &generator)
    }

    /// Logits `[B, T, V]` for int32 token ids `[B, T]` (`T ≤ contextLength`), on the ids' device.
    public func callAsFunction(_ ids: Tensor) -> Tensor {
        guard let activationDType else { return logits(ids) }
        // Every weight's low-precision copy in one launch, not one a weight.
        return castPlan.run(to: activationDType) { logits(ids) }
    }

    private func logits(_ ids: Tensor) -> Tensor {
        guarantee(ids.rank == 2 && ids.dtype == .int32, "GPT: ids must be int32 [B, T], got \(ids.shape) \(ids.dtype)")
        let (b, t, d) = (ids.shape[0], ids.shape[1], config.dModel)
        guarantee(t >= 1 && t <= config.contextLength, "GPT: sequence length \(t) must be in 1...\(config.contextLength) (contextLength)")
        let tokens = wte(ids)                                                  // [B, T, D]
        let positions = wpe(Tensor.arange(t, dtype: .int32, device: ids.device))   // [T, D]
        // [T, D] broadcasts over the batch as a row of [B, T·D].
        var x = (tokens.reshaped([b, t * d]) + positions.reshaped([t * d])).reshaped([b, t, d])
        if let activationDType { x = x.cast(to: activationDType) }
        x = drop(x)
        for block in blocks { x = block(x) }
        x = lnF(x)
        if let lmHead { return lmHead(x) }
        let head = wte.weight.value
        return x.matmul(head.cast(to: x.dtype), transposeB: true)
    }

    /// Mean next-token cross-entropy of the logits of `ids` against `targets` (both int32 `[B, T]`;
    /// a target of -100 is ignored). Computed in float32 for bfloat16 logits.
    public func loss(ids: Tensor, targets: Tensor) -> Tensor {
        guarantee(targets.shape == ids.shape, "GPT.loss: targets \(targets.shape) must match ids \(ids.shape)")
        var logits = self(ids)
        if logits.dtype == .bfloat16 { logits = logits.cast(to: .float32) }
        return crossEntropy(logits.reshaped([-1, config.vocabSize]), targets: targets.reshaped([-1]))
    }

    /// Training FLOPs per token, forward plus backward (Kaplan et al. 2020; nanoGPT's `estimate_mfu`):
    ///
    ///     flopsPerToken = 6·N + 12·layers·contextLength·dModel
    ///
    /// `N` counts the weights a token is multiplied by: every parameter except the two embedding
    /// tables (a lookup is not a product), plus the output head's `V·D` (counted whether or not it
    /// is tied to `wte`). A block's `mlp` that conforms to `ActiveParameterCounting` (an MoE layer)
    /// contributes its active count, not its total. `6·N` is 2 FLOPs per multiply-add in the forward
    /// and twice that in the backward; the second term is the attention scores and their product
    /// with the values (`2·2·T·D` per layer forward, tripled for the backward), at full context.
    public var flopsPerToken: Double {
        let embeddingIDs = Set([ObjectIdentifier(wte.weight), ObjectIdentifier(wpe.weight)])
        var n = 0
        for (_, p) in namedParameters() where !embeddingIDs.contains(ObjectIdentifier(p)) { n += p.value.count }
        for block in blocks {
            if let moe = block.mlp as? ActiveParameterCounting { n += moe.activeParameterCount - block.mlp.parameterCount }
        }
        if config.tieEmbeddings { n += config.vocabSize * config.dModel }
        return 6 * Double(n) + 12 * Double(config.layers * config.contextLength * config.dModel)
    }

    /// The smallest divisors of `n` (at most `count`), for "use a divisor of …" hints.
    ///
    /// Only candidates up to 100,000 are tried: a width read from a damaged file can be 10¹⁸, and
    /// counting up to it would hang the message (issue 13's fuzz test found this).
    ///
    /// ```swift
    /// let divisors = GPT.smallestDivisors(of: 96)  // [1, 2, 3, 4, 6, 8, 12, 16]
    /// ```
    public static func smallestDivisors(of n: Int, count: Int = 8) -> [Int] {
        guard n >= 1 else { return [] }
        return Array((1...min(n, 100_000)).lazy.filter { n % $0 == 0 }.prefix(count))
    }

    /// Checks a configuration, throwing a `GPTConfigError` that names the field and the fix.
    public static func validate(_ c: GPTConfig) throws {
        func fail(_ field: String, _ message: String) -> GPTConfigError { GPTConfigError(field: field, message) }
        guard c.vocabSize >= 2 else {
            throw fail("vocabSize", "vocabSize is \(c.vocabSize); a language model needs at least 2 token ids (256 for bytes)")
        }
        guard c.contextLength >= 1 else {
            throw fail("contextLength", "contextLength is \(c.contextLength); it must be at least 1 (the longest sequence the model sees)")
        }
        guard c.layers >= 1 else {
            throw fail("layers", "layers is \(c.layers); the model needs at least 1 Transformer block")
        }
        guard c.dModel >= 1 else {
            throw fail("dModel", "dModel is \(c.dModel); the model width must be at least 1")
        }
        guard c.heads >= 1 else {
            throw fail("heads", "heads is \(c.heads); attention needs at least 1 head")
        }
        guard c.dModel % c.heads == 0 else {
            let divisors = GPT.smallestDivisors(of: c.dModel).map(String.init).joined(separator: ", ")
            throw fail("heads", "heads (\(c.heads)) must divide dModel (\(c.dModel)) so every head gets dModel / heads channels; "
                + "use a divisor of \(c.dModel) (\(divisors), …)")
        }
        guard c.mlpHidden >= 1 else {
            throw fail("mlpHidden", "mlpHidden is \(c.mlpHidden); the MLP width must be at least 1 (GPT-2 uses 4·dModel)")
        }
        guard c.dropout >= 0 && c.dropout < 1 else {
            throw fail("dropout", "dropout is \(c.dropout); it is a probability and must be in [0, 1)")
        }
    }
}

/// A layer whose tokens use only part of its parameters (a mixture of experts routes each token
/// through `k` of its experts). `GPT.flopsPerToken` counts `activeParameterCount` for such a layer.
/// ```swift
/// final class HalfActive: Module, Layer, ActiveParameterCounting, @unchecked Sendable {
///     let expert: Linear, spare: Linear
///     init(generator g: inout RandomGenerator) { (expert, spare) = (Linear(64, 64, generator: &g), Linear(64, 64, generator: &g)) }
///     var activeParameterCount: Int { expert.parameterCount }   // `spare` is never used by a token
///     func callAsFunction(_ x: Tensor) -> Tensor { expert(x) }
/// }
/// ```
public protocol ActiveParameterCounting: Module {
    /// The number of parameters one token is multiplied by in the forward pass.
    var activeParameterCount: Int { get }
}
