import TestSupport
#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import MoE
import NN
@testable import Tensors

/// `out[b] = Σ_j score[b, j] · expert_{idx[b, j]}(x[b])`, one token and one expert call at a time.
private func perTokenReference(_ x: Tensor, gate: any Gate, experts: [MLPExpert]) -> Tensor {
    let routing = gate.route(x)
    let idx = routing.expert.int32s(), k = gate.topK, d = x.lastDimension
    let rows = (0..<x.shape[0]).map { b -> Tensor in
        let token = x.rows(b..<(b + 1)), scores = routing.score.rows(b..<(b + 1))
        var acc = Tensor.zeros([1, d], dtype: .float64)
        for j in 0..<k where idx[b * k + j] >= 0 {
            acc = acc + experts[Int(idx[b * k + j])](token) * scores.slice(lastAxis: j..<(j + 1))
        }
        return acc
    }
    return Tensor.concat(rows, axis: 0)
}

/// Every gradient a test compares, copied out of the modules.
private struct Gradients {
    var x: [Double], gateWeight: [Double], gateBias: [Double]
    var experts: [[Double]]   // per expert: fc1.w, fc1.b, fc2.w, fc2.b concatenated

    init(x: Tensor, gate: CapacityTopKGate, experts: [[Tensor?]]) {
        self.x = x.grad!.doubles()
        gateWeight = gate.linear.weight.grad!.doubles()
        gateBias = gate.linear.bias!.grad!.doubles()
        self.experts = experts.map { $0.flatMap { $0?.doubles() ?? [] } }
    }
}

private func listGradients(_ list: [MLPExpert]) -> [[Tensor?]] {
    list.map { [$0.fc1.weight.grad, $0.fc1.bias!.grad, $0.fc2.weight.grad, $0.fc2.bias!.grad] }
}

private func batchedGradients(_ experts: BatchedExperts) -> [[Tensor?]] {
    func slice(_ g: Tensor?, _ e: Int) -> Tensor? {
        guard let g else { return nil }
        let per = g.count / g.shape[0]
        return Tensor(Array(g.doubles()[(e * per)..<((e + 1) * per)]))
    }
    return (0..<experts.localExpertCount).map { e in
        [slice(experts.fc1.weight.grad, e), slice(experts.fc1.bias!.grad, e), slice(experts.fc2.weight.grad, e), slice(experts.fc2.bias!.grad, e)]
    }
}

@Suite("MoE layer")
struct MoELayerTests {
    @Test(arguments: [1, 2, 3])
    func layerMatchesAPerTokenReferenceWithDroppedSlots(_ k: Int) {
        var g = RandomGenerator(seed: UInt64(30 + k))
        let (d, h, n, b) = (4, 6, 4, 7)
        let list = (0..<n).map { _ in MLPExpert(dModel: d, hidden: h, generator: &g) }
        let gate = CapacityTopKGate(dModel: d, globalExpertCount: n, topK: k, capacity: b * k / n, generator: &g)
        gate.linear.weight.value = randn([n, d], seed: 40, scale: 2)
        let x = randn([b, d], seed: 41), w = randn([b, d], seed: 42)
        let kept = gate.route(x).expert.int32s()
        #expect(kept.contains(-1) && kept.contains { $0 >= 0 }, "k = \(k): the case should drop some slots and keep others")

        // Reference: per token, through the same expert modules.
        let xr = x.detached().requiringGradient()
        let reference = perTokenReference(xr, gate: gate, experts: list)
        (reference * w).sum().backward()
        let expected = Gradients(x: xr, gate: gate, experts: listGradients(list))
        gate.zeroGrad()
        list.forEach { $0.zeroGrad() }

        let batched = batchedCopy(of: list)
        for experts in [ExpertList(list), batched] as [any Experts] {
            let layer = MoELayer(dModel: d, gate: gate, experts: experts)
            let monitor = LoadMonitor.install(in: layer)
            let xl = x.detached().requiringGradient()
            let out = layer(xl)
            #expect(maxDifference(out.doubles(), reference.doubles()) < 1e-12, "k = \(k) \(type(of: experts)): output")
            (out * w).sum().backward()
            let got = Gradients(x: xl, gate: gate, experts: experts is BatchedExperts ? batchedGradients(batched) : listGradients(list))
            #expect(maxDifference(got.x, expected.x) < 1e-12, "k = \(k) \(type(of: experts)): input gradient")
            #expect(maxDifference(got.gateWeight, expected.gateWeight) < 1e-12, "k = \(k) \(type(of: experts)): gate weight gradient")
            #expect(maxDifference(got.gateBias, expected.gateBias) < 1e-12, "k = \(k) \(type(of: experts)): gate bias gradient")
            for e in 0..<n {
                // An expert that got no token has no gradient in the reference: compare with zeros.
                let want = expected.experts[e].isEmpty ? [Double](repeating: 0, count: got.experts[e].count) : expected.experts[e]
                let have = got.experts[e].isEmpty ? [Double](repeating: 0, count: want.count) : got.experts[e]
                #expect(maxDifference(have, want) < 1e-12, "k = \(k) \(type(of: experts)): expert \(e) gradients")
            }
            let stats = monitor.interval()[0].load
            #expect(stats.keptCounts == (0..<n).map { e in kept.filter { $0 == e }.count })
            #expect(stats.keptSlots == kept.filter { $0 >= 0 }.count && stats.routedSlots == b * k)
            gate.zeroGrad()
            list.forEach { $0.zeroGrad() }
        }
    }

    @Test func oneExpertWithTopOneIsTheDenseMLP() {
        var g = RandomGenerator(seed: 50)
        let dense = MLPExpert(dModel: 4, hidden: 8, generator: &g)
        let moe = MoELayer.mlp(dModel: 4, hidden: 8, expertCount: 1, topK: 1, gate: .topK, dtype: .float64, generator: &g)
        moe.batched.fc1.weight.value = dense.fc1.weight.value.detached().reshaped([1, 8, 4])
        moe.batched.fc1.bias!.value = dense.fc1.bias!.value.detached().reshaped([1, 8])
        moe.batched.fc2.weight.value = dense.fc2.weight.value.detached().reshaped([1, 4, 8])
        moe.batched.fc2.bias!.value = dense.fc2.bias!.value.detached().reshaped([1, 4])
        let x = randn([5, 4], seed: 51)
        #expect(maxDifference(moe(x).doubles(), dense(x).doubles()) < 1e-12)
    }

    @Test func zeroGateLayerIsExpertZero() {
        var g = RandomGenerator(seed: 52)
        let list = (0..<3).map { _ in MLPExpert(dModel: 4, hidden: 5, generator: &g) }
        let layer = MoELayer(dModel: 4, gate: ZeroGate(globalExpertCount: 3, topK: 2), experts: batchedCopy(of: list))
        let x = randn([6, 4], seed: 53)
        #expect(maxDifference(layer(x).doubles(), list[0](x).doubles()) < 1e-12)
    }

    @Test func leadingShapesAreFlattenedAndRestored() {
        var g = RandomGenerator(seed: 54)
        let layer = MoELayer.mlp(dModel: 4, hidden: 6, expertCount: 3, topK: 2, dtype: .float64, generator: &g)
        let x = randn([2, 3, 4], seed: 55)
        let result = layer.forward(x)
        let out = result.output
        #expect(out.shape == [2, 3, 4])
        #expect(result.load.tokenCount == 6)
        #expect(maxDifference(out.doubles(), layer(x.reshaped([6, 4])).doubles()) < 1e-12)
    }

    @Test func dispatchAndCombineGradientsMatchFiniteDifferences() {
        // Slots: an unrouted one (-1), an expert with no rows (expert 2), repeats of one expert per token.
        let expert = Tensor([1, 0, -1, 3, 3, 1, 0, 0, 1, -1] as [Int32], shape: [5, 2])
        let inputs = [randn([5, 3], seed: 60), randn([5, 2], seed: 61), randn([4, 4, 3], seed: 62), randn([4, 4], seed: 63),
                      randn([4, 3, 4], seed: 64), randn([4, 3], seed: 65)]
        let error = gradientCheckError(inputs) { t in
            let dispatcher = TokenDispatcher(globalExpertCount: 4)
            let dispatched = dispatcher.dispatch(t[0], routing: GateOutput(expert: expert, score: t[1]))
            let experts = BatchedExperts(fc1: GroupedLinear(weight: t[2], bias: t[3]), fc2: GroupedLinear(weight: t[4], bias: t[5]))
            return dispatcher.combine(experts(dispatched.rows, groups: dispatched.groups), score: t[1], dispatched)
        }
        #expect(error < 1e-6)
    }

    @Test func capacityDropsThroughTheLayerMatchFiniteDifferences() {
        var g = RandomGenerator(seed: 66)
        let gate = CapacityTopKGate(dModel: 3, globalExpertCount: 3, topK: 2, capacity: 2, generator: &g)
        let experts = ExpertList((0..<3).map { _ in MLPExpert(dModel: 3, hidden: 4, generator: &g) })
        let layer = MoELayer(dModel: 3, gate: gate, experts: experts)
        let error = gradientCheckError([randn([5, 3], seed: 67)]) { layer($0[0]) }
        #expect(error < 1e-6)
    }

    @Test func parametersAreNamedForCheckpoints() {
        var g = RandomGenerator(seed: 68)
        let layer = MoELayer.mlp(dModel: 4, hidden: 6, expertCount: 3, topK: 2, generator: &g)
        #expect(layer.namedParameters().map(\.name) == ["gate.linear.weight", "gate.linear.bias", "experts.fc1.weight", "experts.fc1.bias",
                                                         "experts.fc2.weight", "experts.fc2.bias"])
        #expect(layer.batched.fc1.weight.shape == [3, 6, 4] && layer.batched.fc2.weight.shape == [3, 4, 6])
    }

    @Test func megatronInitHasZeroBiasesAndScaledSecondWeights() {
        var g = RandomGenerator(seed: 69)
        let experts = BatchedExperts(localExpertCount: 8, dModel: 64, hidden: 128, initialization: .megatron(std: 0.02, layers: 8), generator: &g)
        func std(_ t: Tensor) -> Double {
            let v = t.doubles(), m = v.reduce(0, +) / Double(v.count)
            return (v.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(v.count)).squareRoot()
        }
        #expect(Swift.abs(std(experts.fc1.weight.value) / 0.02 - 1) < 0.02)
        #expect(Swift.abs(std(experts.fc2.weight.value) / (0.02 / 4) - 1) < 0.02)
        #expect(experts.fc1.bias!.value.doubles().allSatisfy { $0 == 0 } && experts.fc2.bias!.value.doubles().allSatisfy { $0 == 0 })
    }
}

@Suite("Load statistics and auxiliary losses")
struct LoadStatisticsTests {
    @Test func statisticsFollowTheirDefinitions() {
        let s = LoadStatistics(routedCounts: [4, 0, 2, 2], keptCounts: [3, 0, 2, 2], tokenCount: 4, topK: 2)
        #expect(s.droppedFraction == 1.0 / 8)
        #expect(s.maxOverMean == 2)
        #expect(Swift.abs(s.coefficientOfVariation - 2.0.squareRoot() / 2) < 1e-15)
        let h = -(0.5 * Glibc.log(0.5) + 2 * 0.25 * Glibc.log(0.25))
        #expect(Swift.abs(s.entropy - h) < 1e-15)
        #expect(Swift.abs(s.normalizedEntropy - h / Glibc.log(4)) < 1e-15)
    }

    /// Calling a layer attaches `balanceLossWeight · auxLoss + zLoss` to its output: the task loss's
    /// backward gives exactly the gradients of the explicit objective built from `forward`.
    @Test func attachedLossesGiveTheGradientsOfTheExplicitObjective() {
        final class TwoLayers: Module, @unchecked Sendable {
            let a: MoELayer, b: MoELayer
            init(generator g: inout RandomGenerator) {
                a = MoELayer.mlp(dModel: 4, hidden: 4, expertCount: 4, topK: 2, gate: .gshard, zLossWeight: 1e-3, dtype: .float64, generator: &g)
                b = MoELayer.mlp(dModel: 4, hidden: 4, expertCount: 4, topK: 1, gate: .switch, dtype: .float64, generator: &g)
            }
        }
        func make() -> TwoLayers {
            var g = RandomGenerator(seed: 70)
            let model = TwoLayers(generator: &g)
            model.eval()   // no random routing or jitter: both runs route alike
            return model
        }
        let x = randn([6, 4], seed: 71), w = randn([6, 4], seed: 72)

        let explicit = make()
        let ra = explicit.a.forward(x), rb = explicit.b.forward(x)
        #expect(rb.zLoss == nil)
        let objective = (ra.output * w).sum() + (rb.output * w).sum() + 0.01 * (ra.auxLoss! + rb.auxLoss!) / 2 + ra.zLoss!
        objective.backward()

        let attached = make()
        for layer in [attached.a, attached.b] { layer.balanceLossWeight = 0.01 / 2 }
        ((attached.a(x) * w).sum() + (attached.b(x) * w).sum()).backward()
        for ((name, p), (_, q)) in zip(explicit.namedParameters(), attached.namedParameters()) {
            #expect(maxDifference(q.grad!.doubles(), p.grad!.doubles()) < 1e-12, "\(name) gradient")
        }
    }

    @Test func loadMonitorSumsTrainingForwardsAndSkipsEvaluation() {
        var g = RandomGenerator(seed: 73)
        let layer = MoELayer.mlp(dModel: 4, hidden: 4, expertCount: 4, topK: 2, dtype: .float64, generator: &g)
        let monitor = LoadMonitor.install(in: layer)
        let x = randn([6, 4], seed: 74)
        let once = layer.forward(x).load
        _ = layer(x)
        _ = layer(x)
        layer.eval()
        _ = layer(x)
        #expect(monitor.layerNames == [""])
        #expect(monitor.interval()[0].load.routedCounts == once.routedCounts.map { 2 * $0 })
        #expect(monitor.interval()[0].load.tokenCount == 12)
        monitor.reset()
        #expect(monitor.interval().isEmpty)
    }
}
