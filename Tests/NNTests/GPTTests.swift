import TestSupport
import Testing
@testable import NN
import Tensors

@Suite("GPT")
struct GPTTests {
    static let tiny = GPTConfig(vocabSize: 11, contextLength: 4, layers: 1, dModel: 8, heads: 2)

    @Test func parametersAreNamedLikeGPT2() {
        var g = RandomGenerator(seed: 1)
        let model = GPT(GPTConfig(vocabSize: 11, contextLength: 4, layers: 2, dModel: 8, heads: 2), generator: &g)
        var expected = ["wte.weight", "wpe.weight"]
        for i in 0..<2 {
            for name in ["ln1", "attn.qkv", "attn.proj", "ln2", "mlp.fc1", "mlp.fc2"] {
                expected += ["blocks.\(i).\(name).weight", "blocks.\(i).\(name).bias"]
            }
        }
        expected += ["lnF.weight", "lnF.bias"]
        #expect(model.namedParameters().map(\.name) == expected)
    }

    static func countFormula(_ c: GPTConfig) -> Int {
        let (v, t, l, d, h) = (c.vocabSize, c.contextLength, c.layers, c.dModel, c.mlpHidden)
        let block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * h + h) + (h * d + d)
        return v * d + t * d + l * block + 2 * d + (c.tieEmbeddings ? 0 : v * d)
    }

    @Test func parameterCountMatchesFormulaTiedAndUntied() {
        var g = RandomGenerator(seed: 2)
        let tied = GPTConfig(vocabSize: 13, contextLength: 6, layers: 3, dModel: 12, heads: 3, mlpHidden: 20)
        #expect(GPT(tied, generator: &g).parameterCount == Self.countFormula(tied))
        var untied = tied
        untied.tieEmbeddings = false
        let model = GPT(untied, generator: &g)
        #expect(model.parameterCount == Self.countFormula(untied))
        #expect(model.namedParameters().last?.name == "lmHead.weight")
        #expect(GPT(Self.tiny, generator: &g).parameterCount == Self.countFormula(Self.tiny))
    }

    @Test func initFollowsGPT2() {
        var g = RandomGenerator(seed: 3)
        let c = GPTConfig(vocabSize: 64, contextLength: 32, layers: 2, dModel: 64, heads: 4)
        let model = GPT(c, generator: &g)
        func std(_ t: Tensor) -> Double {
            let v = t.doubles(), m = v.reduce(0, +) / Double(v.count)
            return (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count)).squareRoot()
        }
        for p in [model.wte.weight, model.blocks[0].attn.qkv.weight, (model.blocks[1].mlp as! MLP).fc1.weight] {
            #expect(Swift.abs(std(p.value) - 0.02) < 0.002)
        }
        let residual = 0.02 / 4.0.squareRoot()   // 0.02 / √(2·layers), layers = 2
        #expect(Swift.abs(std(model.blocks[0].attn.proj.weight.value) - residual) < 0.001)
        #expect(Swift.abs(std((model.blocks[1].mlp as! MLP).fc2.weight.value) - residual) < 0.001)
        #expect(model.blocks[0].attn.qkv.bias!.value.doubles().allSatisfy { $0 == 0 })
        #expect(model.lnF.weight.value.doubles().allSatisfy { $0 == 1 })
        #expect(model.blocks[1].ln2.bias.value.doubles().allSatisfy { $0 == 0 })
    }

    @Test func logitsUseTheTiedEmbeddingAndPositions() {
        var g = RandomGenerator(seed: 4)
        let model = GPT(Self.tiny, dtype: .float64, generator: &g)
        let ids = Tensor([1, 5, 10, 0, 3, 3, 7, 2] as [Int32], shape: [2, 4])
        let logits = model(ids)
        #expect(logits.shape == [2, 4, 11])
        // The same pipeline spelled out: embeddings, block, final norm, h·wteᵀ.
        let d = 8
        let tok = model.wte.weight.value.doubles(), pos = model.wpe.weight.value.doubles()
        var x = [Double]()
        for (i, id) in ids.int32s().enumerated() { for c in 0..<d { x.append(tok[Int(id) * d + c] + pos[(i % 4) * d + c]) } }
        let h = model.lnF(model.blocks[0](Tensor(x, shape: [2, 4, d]))).doubles()
        var ref = [Double]()
        for r in 0..<8 { for v in 0..<11 { ref.append((0..<d).map { h[r * d + $0] * tok[v * d + $0] }.reduce(0, +)) } }
        #expect(maxDifference(logits.doubles(), ref) < 1e-12)
    }

    @Test func gradientsMatchFiniteDifferences() {
        var g = RandomGenerator(seed: 5)
        let model = GPT(Self.tiny, dtype: .float64, generator: &g)
        // Larger than GPT-2's init so every path carries a gradient well above the differencing noise.
        for p in model.parameters() where p.value.rank == 2 { p.value = p.value * 10 }
        let ids = Tensor([1, 5, 10, 0, 3, 3, 7, 2] as [Int32], shape: [2, 4])
        let targets = Tensor([5, 10, 0, 4, 3, 7, 2, 9] as [Int32], shape: [2, 4])
        let chosen = ["wte.weight", "wpe.weight", "blocks.0.ln1.weight", "blocks.0.attn.qkv.weight",
                      "blocks.0.attn.proj.bias", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight", "lnF.bias"]
        let named = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.name, $0.parameter) })
        let error = parameterGradientError(chosen.map { named[$0]! }) { model.loss(ids: ids, targets: targets) }
        #expect(error < 1e-5)
    }

    @Test func validationNamesTheFieldAndTheFix() {
        func error(_ c: GPTConfig) -> GPTConfigError? {
            do { try GPT.validate(c); return nil } catch { return error as? GPTConfigError }
        }
        #expect(error(Self.tiny) == nil)
        let cases: [(GPTConfig, String, String)] = [
            (GPTConfig(vocabSize: 1, contextLength: 4, layers: 1, dModel: 8, heads: 2), "vocabSize", "at least 2"),
            (GPTConfig(contextLength: 0, layers: 1, dModel: 8, heads: 2), "contextLength", "at least 1"),
            (GPTConfig(contextLength: 4, layers: 0, dModel: 8, heads: 2), "layers", "at least 1 Transformer block"),
            (GPTConfig(contextLength: 4, layers: 1, dModel: 0, heads: 1), "dModel", "at least 1"),
            (GPTConfig(contextLength: 4, layers: 1, dModel: 8, heads: 0), "heads", "at least 1 head"),
            (GPTConfig(contextLength: 4, layers: 1, dModel: 10, heads: 3), "heads", "heads (3) must divide dModel (10)"),
            (GPTConfig(contextLength: 4, layers: 1, dModel: 8, heads: 2, mlpHidden: 0), "mlpHidden", "at least 1"),
            (GPTConfig(contextLength: 4, layers: 1, dModel: 8, heads: 2, dropout: 1), "dropout", "[0, 1)"),
        ]
        for (config, field, text) in cases {
            let e = error(config)
            #expect(e?.field == field)
            #expect(e?.message.contains(text) == true, "\(e?.message ?? "no error") lacks \(text)")
        }
        #expect(error(GPTConfig(contextLength: 4, layers: 1, dModel: 10, heads: 3))?.message.contains("1, 2, 5, 10") == true)
    }

    @Test func flopsPerTokenFollowsTheDocumentedFormula() {
        var g = RandomGenerator(seed: 6)
        let c = GPTConfig(vocabSize: 50, contextLength: 16, layers: 2, dModel: 8, heads: 2)
        let model = GPT(c, generator: &g)
        let nonEmbedding = Self.countFormula(c) - c.vocabSize * c.dModel - c.contextLength * c.dModel
        let expected = 6 * Double(nonEmbedding + c.vocabSize * c.dModel) + 12 * Double(c.layers * c.contextLength * c.dModel)
        #expect(model.flopsPerToken == expected)
    }

    @Test func dropoutsAreListedByName() {
        var g = RandomGenerator(seed: 7)
        let model = GPT(GPTConfig(vocabSize: 11, contextLength: 4, layers: 1, dModel: 8, heads: 2, dropout: 0.1), generator: &g)
        #expect(model.namedDropouts().map(\.name) ==
                ["drop", "blocks.0.attn.attentionDropout", "blocks.0.attn.residualDropout", "blocks.0.mlp.dropout"])
        let ids = Tensor([1, 2, 3, 4] as [Int32], shape: [1, 4])
        let states = model.namedDropouts().map(\.dropout.generator)
        let first = model(ids).scalars()
        for (entry, state) in zip(model.namedDropouts(), states) { entry.dropout.generator = state }
        #expect(model(ids).scalars() == first)
        model.eval()
        let a = model(ids).scalars()
        #expect(model(ids).scalars() == a)
        #expect(a != first)
    }

    @Test func trainingOnARepeatingPatternCutsTheLoss() {
        var g = RandomGenerator(seed: 42)
        let config = GPTConfig(vocabSize: 11, contextLength: 16, layers: 2, dModel: 32, heads: 2)
        let model = GPT(config, generator: &g)
        let optimizer = AdamW(parameters: model.namedParameters().map { ($0.name, $0.parameter) },
                              learningRate: 1e-2, weightDecay: 0)
        let pattern: [Int32] = [3, 1, 4, 1, 5, 9, 2, 6]
        func batch(_ step: Int) -> (Tensor, Tensor) {
            var x = [Int32](), y = [Int32]()
            for row in 0..<8 {
                let start = (step * 3 + row * 5) % pattern.count
                for t in 0..<16 {
                    x.append(pattern[(start + t) % pattern.count])
                    y.append(pattern[(start + t + 1) % pattern.count])
                }
            }
            return (Tensor(x, shape: [8, 16]), Tensor(y, shape: [8, 16]))
        }
        var losses = [Double]()
        for step in 0..<50 {
            let (x, y) = batch(step)
            let loss = model.loss(ids: x, targets: y)
            losses.append(loss.item())
            loss.backward()
            clipGradNorm(model.parameters(), maxNorm: 1)
            optimizer.step()
            optimizer.zeroGrad()
        }
        #expect(Swift.abs(losses[0] - 2.4) < 0.3)   // ≈ ln 11 at init
        #expect(losses.suffix(5).reduce(0, +) / 5 < 0.2 * losses[0], "losses: \(losses)")
    }
}
