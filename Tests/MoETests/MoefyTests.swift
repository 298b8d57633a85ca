import TestSupport
import Testing
@testable import MoE
import NN
@testable import Tensors

private func smallGPT(seed: UInt64, dtype: DType = .float64) -> GPT {
    var g = RandomGenerator(seed: seed)
    return GPT(GPTConfig(vocabSize: 32, contextLength: 8, layers: 4, dModel: 8, heads: 2, mlpHidden: 16), dtype: dtype, generator: &g)
}

private let ids = Tensor([1, 5, 9, 2, 31, 0, 7, 7, 3, 4, 12, 30] as [Int32], shape: [2, 6])

@Suite("moefy")
struct MoefyTests {
    @Test func replacesEveryNthBlockWithExpertsOfHiddenOverK() {
        let model = smallGPT(seed: 1)
        var g = RandomGenerator(seed: 2)
        let names = moefy(model, expertCount: 4, topK: 2, every: 2, generator: &g)
        #expect(names == ["blocks.0.mlp", "blocks.2.mlp"])
        #expect(model.blocks[1].mlp is MLP && model.blocks[3].mlp is MLP)
        let moe = model.blocks[0].mlp as! MoELayer
        #expect(moe.batched.fc1.weight.shape == [4, 8, 8] && moe.batched.fc2.weight.shape == [4, 8, 8])
        let params = Set(model.namedParameters().map(\.name))
        #expect(params.contains("blocks.2.mlp.gate.linear.weight") && params.contains("blocks.2.mlp.experts.fc2.bias"))
        #expect(params.contains("blocks.1.mlp.fc1.weight"))
        #expect(LoadMonitor.install(in: model).layerNames == ["blocks.0.mlp", "blocks.2.mlp"])
        #expect(moe.experts.parameters().allSatisfy { $0.group == .expert } && moe.gate.parameters().allSatisfy { $0.group == .shared })
    }

    @Test func flopsPerTokenStayTheDenseModelsUpToTheGateAndBiases() {
        let dense = smallGPT(seed: 3), sparse = smallGPT(seed: 3)
        var g = RandomGenerator(seed: 4)
        let (n, k, d) = (4, 2, 8)
        moefy(sparse, expertCount: n, topK: k, generator: &g)
        // Per block: the gate's d·N + N, and k output biases where the dense MLP has one.
        let extra = 4 * ((d * n + n) + (k - 1) * d)
        #expect(sparse.flopsPerToken - dense.flopsPerToken == 6 * Double(extra))
    }

    @Test func upcyclingCopiesTheDenseMLPIntoEveryExpert() {
        let model = smallGPT(seed: 5)
        let before = model(ids).doubles()
        var g = RandomGenerator(seed: 6)
        moefy(model, expertCount: 3, topK: 2, copy: true, generator: &g)
        // Top-k scores add up to 1 and every expert is the dense MLP: the model computes the same logits.
        #expect(maxDifference(model(ids).doubles(), before) < 1e-10)
        let moe = model.blocks[3].mlp as! MoELayer
        #expect(moe.batched.fc1.weight.shape == [3, 16, 8])
    }

    @Test func aMoefiedGPTTrainsEndToEnd() {
        let model = smallGPT(seed: 7, dtype: .float32)
        var g = RandomGenerator(seed: 8)
        moefy(model, expertCount: 4, topK: 1, gate: .switch, balanceWeight: 0.01, generator: &g)
        let monitor = LoadMonitor.install(in: model)
        let targets = Tensor([5, 9, 2, 31, 0, 7, 4, 12, 30, 1, 1, 2] as [Int32], shape: [2, 6])
        model.loss(ids: ids, targets: targets).backward()
        let moe = model.blocks[0].mlp as! MoELayer
        #expect(moe.balanceLossWeight == 0.01 / 4)
        #expect(moe.gate.parameters().allSatisfy { $0.grad != nil })
        #expect(moe.batched.fc1.weight.grad != nil)
        #expect(monitor.interval().count == 4)
        #expect(monitor.interval()[0].load.tokenCount == 12)
    }
}
