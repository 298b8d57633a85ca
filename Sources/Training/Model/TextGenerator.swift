#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NN
import Tensors

/// Samples text from a trained byte-level GPT, one token at a time.
///
/// Each step runs the model on the last `contextLength` tokens, takes the logits of the last
/// position to the host, divides them by the temperature, keeps the `topK` largest (0 = all), and
/// draws from their softmax with a seeded generator (temperature 0 picks the largest: greedy).
/// ```swift
/// var sampler = TextGenerator(model: model, seed: 7)
/// let text = sampler.generate(prompt: "37+48=", tokens: 20, temperature: 0.8, topK: 40)
/// ```
public struct TextGenerator {
    public let model: GPT
    public var generator: RandomGenerator
    let tokenizer = ByteTokenizer()

    public init(model: GPT, seed: UInt64) {
        self.model = model
        generator = RandomGenerator(seed: seed)
    }

    /// The prompt's continuation (without the prompt), `tokens` bytes long, decoded as UTF-8
    /// (invalid sequences become U+FFFD). `onToken` sees each token as it is drawn.
    public mutating func generate(prompt: String, tokens: Int, temperature: Double, topK: Int,
                                  onToken: (Int32) -> Void = { _ in }) -> String {
        var context = tokenizer.encode(prompt)
        if context.isEmpty { context = [Int32(UInt8(ascii: "\n"))] }  // the corpus's line start
        var produced: [Int32] = []
        model.eval()
        defer { model.train() }
        let device = model.wte.weight.value.device
        withoutGradient {
            for _ in 0..<tokens {
                let window = Array(context.suffix(model.config.contextLength))
                let ids = Tensor(window, shape: [1, window.count], device: device)
                let logits = model(ids).reshaped([window.count, model.config.vocabSize])
                let last = logits.rows((window.count - 1)..<window.count).cast(to: .float32).scalars()
                let token = Int32(sample(last, temperature: temperature, topK: topK))
                context.append(token)
                produced.append(token)
                onToken(token)
            }
        }
        return tokenizer.decode(produced)
    }

    /// An index drawn from `softmax(logits / temperature)` restricted to the `topK` largest.
    mutating func sample(_ logits: [Float], temperature: Double, topK: Int) -> Int {
        let order = logits.indices.sorted { logits[$0] > logits[$1] }
        if temperature <= 0 { return order[0] }
        let kept = topK > 0 ? Array(order.prefix(topK)) : order
        let top = Double(logits[kept[0]])
        let weights = kept.map { exp((Double(logits[$0]) - top) / temperature) }
        let total = weights.reduce(0, +)
        var u = Double(generator.nextUniform()) * total
        for (i, w) in zip(kept, weights) {
            u -= w
            if u < 0 { return i }
        }
        return kept[kept.count - 1]
    }
}
