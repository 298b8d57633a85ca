import TestSupport
#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import MoE
import NN
@testable import Tensors

// References for the routing methods of issue 12, computed per token on the host in float64.

/// `z = x Wᵀ + b` of a float64 `Linear`, by loops: `[T][N]`.
private func logits(_ x: Tensor, _ linear: Linear) -> [[Double]] {
    let xs = x.doubles(), w = linear.weight.value.doubles(), b = linear.bias?.value.doubles()
    let t = x.shape[0], d = x.lastDimension, n = linear.outFeatures
    var z = [[Double]](repeating: [Double](repeating: 0, count: n), count: t)
    for i in 0..<t {
        for e in 0..<n {
            var v: Double = b?[e] ?? 0
            for j in 0..<d { v += xs[i * d + j] * w[e * d + j] }
            z[i][e] = v
        }
    }
    return z
}

/// Expert choice by sorting: `chosen[t][e]`, each expert's top `c` tokens of its column, ties to the lower token.
private func expertChoice(_ s: [[Double]], capacity c: Int) -> [[Bool]] {
    let t = s.count, n = s.first?.count ?? 0
    var chosen = [[Bool]](repeating: [Bool](repeating: false, count: n), count: t)
    for e in 0..<n {
        let order = (0..<t).sorted { s[$0][e] != s[$1][e] ? s[$0][e] > s[$1][e] : $0 < $1 }
        for i in order.prefix(c) { chosen[i][e] = true }
    }
    return chosen
}

/// The expert-choice layer per token: `out[t] = Σ_{e chose t} S[t, e] · expert_e(x_t)`, built of
/// per-token tensor ops (differentiable, so its gradients are a second opinion on the layer's).
private func expertChoiceReference(_ x: Tensor, gate: ExpertChoiceGate, experts: [MLPExpert], training: Bool) -> Tensor {
    let t = x.shape[0], n = experts.count
    let s = logits(x, gate.linear).map(softmax)
    let chosen: [[Bool]] = training
        ? expertChoice(s, capacity: gate.capacity(tokens: t))
        : s.map { row in let top = Set(topIndices(row, gate.topK)); return (0..<n).map { top.contains($0) } }
    var rows: [Tensor] = []
    for i in 0..<t {
        let xi = x.rows(i..<(i + 1))
        let si = gate.linear(xi).softmax()   // [1, N], differentiable in x and the gate
        var out = Tensor.zeros([1, x.lastDimension], dtype: .float64)
        for e in 0..<n where chosen[i][e] {
            let weight = si.gather(lastAxis: Tensor([Int32(e)], shape: [1, 1]))
            out = out + experts[e](xi) * weight
        }
        rows.append(out)
    }
    return Tensor.concat(rows, axis: 0)
}

private func expertChoiceLayer(d: Int, n: Int, cf: Double, seed: UInt64) -> (MoELayer, ExpertChoiceGate, [MLPExpert]) {
    var g = RandomGenerator(seed: seed)
    let gate = ExpertChoiceGate(dModel: d, globalExpertCount: n, capacityFactor: cf, dtype: .float64, generator: &g)
    let list = (0..<n).map { _ in MLPExpert(dModel: d, hidden: 5, generator: &g) }
    return (MoELayer(dModel: d, gate: gate, experts: batchedCopy(of: list)), gate, list)
}

@Suite("Routing methods: expert choice, bias balancing, shared experts")
struct RoutingMethodTests {
    // MARK: Expert choice

    @Test func expertChoiceGivesEveryExpertExactlyCTokensInTokenOrder() {
        let (t, n, d) = (10, 4, 6)
        let (layer, gate, _) = expertChoiceLayer(d: d, n: n, cf: 2, seed: 1)
        let x = randn([t, d], seed: 2)
        let c = gate.capacity(tokens: t)
        #expect(c == 5)   // ceil(2 · 10 / 4)
        let routing = gate.route(x)
        let plan = routing.plan!
        #expect(plan.routedCounts.int32s() == [Int32](repeating: Int32(c), count: n))
        #expect(plan.keptCounts.int32s() == [Int32](repeating: Int32(c), count: n))
        // The table: column e holds e where expert e chose the token, by the sorting reference.
        let chosen = expertChoice(logits(x, gate.linear).map(softmax), capacity: c)
        let expected = (0..<t).flatMap { i in (0..<n).map { e in chosen[i][e] ? Int32(e) : -1 } }
        #expect(routing.expert.int32s() == expected)
        // Rows are expert-contiguous, each expert's tokens in token order.
        let tokens = plan.tokenOfRow.int32s().prefix(n * c).map(Int.init)
        for e in 0..<n {
            let block = Array(tokens[(e * c)..<((e + 1) * c)])
            #expect(block == (0..<t).filter { chosen[$0][e] })
        }
        #expect(layer.forward(x).load.routedCounts == [Int](repeating: c, count: n))
        // More seats than tokens: every expert takes every token.
        var g = RandomGenerator(seed: 1)
        let wide = ExpertChoiceGate(dModel: d, globalExpertCount: n, capacityFactor: 8, dtype: .float64, generator: &g)
        #expect(wide.capacity(tokens: 3) == 3)
    }

    @Test func expertChoiceLayerAndItsGradientsMatchAPerTokenReference() {
        let (t, n, d) = (7, 3, 4)
        let (layer, gate, list) = expertChoiceLayer(d: d, n: n, cf: 1.5, seed: 3)
        let x = randn([t, d], seed: 4)
        let out = layer.forward(x).output
        let reference = expertChoiceReference(x, gate: gate, experts: list, training: true)
        #expect(maxDifference(out.doubles(), reference.doubles()) < 1e-12)

        // Gradients of Σ out ⊙ w against autograd through the per-token reference.
        let w = randn([t, d], seed: 5)
        let xLayer = x.detached().requiringGradient(), xRef = x.detached().requiringGradient()
        let batched = layer.batched
        for p in layer.parameters() + gate.parameters() + list.flatMap({ $0.parameters() }) { p.grad = nil }
        (layer.forward(xLayer).output * w).sum().backward()
        (expertChoiceReference(xRef, gate: gate, experts: list, training: true) * w).sum().backward()
        #expect(maxDifference(xLayer.grad!.doubles(), xRef.grad!.doubles()) < 1e-12)
        let per = list[0].fc1.weight.value.count
        let ownFC1 = list.map { $0.fc1.weight.grad?.doubles() ?? [Double](repeating: 0, count: per) }
        // The gate's parameters are shared by both computations: the layer's gradient plus the
        // reference's is twice the reference's exactly when they agree.
        let gateW = gate.linear.weight.grad!.doubles()
        for p in gate.parameters() { p.grad = nil }
        (expertChoiceReference(x, gate: gate, experts: list, training: true) * w).sum().backward()
        let refGateW = gate.linear.weight.grad!.doubles()
        #expect(maxDifference(gateW, refGateW.map { 2 * $0 }) < 1e-12)
        // Expert e's fc1 weight: slice e of the batched weight against expert e's own.
        let fc1 = batched.fc1.weight.grad!.doubles()
        for e in list.indices {
            #expect(maxDifference(Array(fc1[(e * per)..<((e + 1) * per)]), ownFC1[e]) < 1e-12)
        }
        // Finite differences of the layer itself (x and every gate and expert parameter).
        #expect(gradientCheckError([x]) { layer.forward($0[0]).output } < 1e-6)
        #expect(parameterGradientError(layer.parameters()) { (layer.forward(x).output * w).sum() } < 1e-5)
    }

    @Test func expertChoiceBreaksTiesByTokenIndexAndLeavesUnchosenTokensAtZero() {
        let (n, d) = (2, 3)
        let (layer, gate, _) = expertChoiceLayer(d: d, n: n, cf: 1, seed: 6)
        // Four identical tokens: equal scores in every column, so each expert takes tokens 0 and 1.
        let row = randn([1, d], seed: 7)
        let x = Tensor.concat([row, row, row, row], axis: 0)
        #expect(gate.capacity(tokens: 4) == 2)
        let routing = gate.route(x)
        #expect(routing.expert.int32s() == [0, 1, 0, 1, -1, -1, -1, -1])
        let out = layer.forward(x).output.doubles()
        #expect(out[(2 * d)...].allSatisfy { $0 == 0 }, "tokens 2 and 3 were chosen by no expert: their output is exactly 0")
        #expect(out[..<(2 * d)].contains { $0 != 0 })
    }

    @Test func expertChoiceRoutesByPerTokenTopKInEvaluationAndReportsTheDisagreement() {
        let (t, n, d) = (12, 4, 5)
        let (layer, gate, list) = expertChoiceLayer(d: d, n: n, cf: 2, seed: 8)
        let x = randn([t, d], seed: 9)
        let s = logits(x, gate.linear).map(softmax)
        // Training: the fraction of per-token top-2 slots that the experts did not choose, by a loop.
        let chosen = expertChoice(s, capacity: gate.capacity(tokens: t))
        let missed = (0..<t).reduce(0) { m, i in m + topIndices(s[i], 2).filter { !chosen[i][$0] }.count }
        let training = gate.route(x)
        #expect(training.routingDisagreement == Double(missed) / Double(t * 2))
        #expect(missed > 0, "choose inputs where the two routings differ")
        layer.eval()
        let routing = gate.route(x)
        #expect(routing.expert.shape == [t, 2] && routing.plan == nil && routing.routingDisagreement == nil)
        #expect(routing.expert.int32s().map(Int.init) == (0..<t).flatMap { topIndices(s[$0], 2) })
        #expect(maxDifference(routing.score.doubles(), (0..<t).flatMap { i in topIndices(s[i], 2).map { s[i][$0] } }) < 1e-12)
        let out = layer.forward(x).output
        #expect(maxDifference(out.doubles(), expertChoiceReference(x, gate: gate, experts: list, training: false).doubles()) < 1e-12)
        // Causality in evaluation: a token's output does not depend on the tokens after it.
        let firstHalf = layer.forward(x.rows(0..<6)).output.doubles()
        #expect(maxDifference(firstHalf, Array(out.doubles()[..<(6 * d)])) < 1e-12)
    }

    @Test func expertChoiceInTheTrainerRecordsTheDisagreementOfEveryLayer() {
        var g = RandomGenerator(seed: 10)
        let model = Sequential([
            MoELayer.mlp(dModel: 4, hidden: 6, expertCount: 4, gate: .expertChoice, capacityFactor: CapacityFactor(training: 2, eval: 2),
                         dtype: .float64, generator: &g),
        ])
        let monitor = LoadMonitor.install(in: model)
        _ = model(randn([2, 8, 4], seed: 11))
        let routing = monitor.intervalRouting()
        #expect(routing.count == 1 && routing[0].routingDisagreement != nil && routing[0].bias == nil)
        #expect(routing[0].load.routedCounts == [8, 8, 8, 8])   // C = ceil(2 · 16 / 4)
    }

    // MARK: Bias balancing

    @Test func biasMovesByTheSignOfTheLoadGap() {
        var g = RandomGenerator(seed: 12)
        let gate = TopKGate(dModel: 3, globalExpertCount: 4, topK: 1, balance: .bias, biasUpdateRate: 0.5, generator: &g)
        gate.updateBias(loads: [10, 2, 4, 0])   // mean 4
        #expect(gate.expertBias!.value.doubles() == [-0.5, 0.5, 0, 0.5])
        gate.updateBias(loads: [10, 2, 4, 0])
        #expect(gate.expertBias!.value.doubles() == [-1, 1, 0, 1])
        #expect(gate.parameters().count == 2, "the bias is a buffer, not a parameter")
        var h = RandomGenerator(seed: 12)
        let plain = TopKGate(dModel: 3, globalExpertCount: 4, topK: 1, generator: &h)
        #expect(plain.expertBias == nil)
    }

    /// The device form a captured step runs moves the bias exactly as the host form does, in place,
    /// and not at all when the step's squared gradient norm is not finite.
    @Test func biasStepOnTheDeviceIsTheHostStep() {
        let loads: [[Int]] = [[10, 2, 4, 0], [3, 3, 3, 3], [0, 0, 0, 16], [5, 4, 4, 3]]
        var g = RandomGenerator(seed: 12), h = RandomGenerator(seed: 12)
        let host = TopKGate(dModel: 3, globalExpertCount: 4, topK: 1, balance: .bias, biasUpdateRate: 0.25, generator: &g)
        let device = TopKGate(dModel: 3, globalExpertCount: 4, topK: 1, balance: .bias, biasUpdateRate: 0.25, generator: &h)
        let storage = device.expertBias!.value
        for load in loads {
            host.updateBias(loads: load)
            device.updateBias(routed: Tensor(load.map(Int32.init), shape: [4]), skipUnlessFinite: Tensor([1.5], shape: [1], dtype: .float32))
            #expect(device.expertBias!.value.doubles() == host.expertBias!.value.doubles())
        }
        #expect(device.expertBias!.value.address == storage.address, "in place: a captured graph reads the bias where it was")
        let before = device.expertBias!.value.doubles()
        device.updateBias(routed: Tensor([9, 1, 1, 1] as [Int32], shape: [4]), skipUnlessFinite: Tensor([Double.nan], shape: [1], dtype: .float32))
        #expect(device.expertBias!.value.doubles() == before)
    }

    @Test func biasChoosesButTheWeightsComeFromTheUnbiasedScores() {
        var g = RandomGenerator(seed: 13)
        let (t, n) = (6, 4)
        for score in RouterScore.allCases {
            let gate = TopKGate(dModel: n, globalExpertCount: n, topK: 2, balance: .bias, score: score, dtype: .float64, generator: &g)
            setIdentity(gate.linear)
            let bias = [0.3, -0.2, 0.05, 0.0]
            gate.expertBias!.value = Tensor(bias, dtype: .float32)
            let x = randn([t, n], seed: 14), z = x.doubles()
            let out = gate.route(x)
            for i in 0..<t {
                let r = row(z, i, n)
                let affinity = score == .softmax ? softmax(r) : r.map { 1 / (1 + exp(-$0)) }
                let biased = (0..<n).map { affinity[$0] + Double(Float(bias[$0])) }
                let top = topIndices(biased, 2)
                #expect(out.expert.int32s()[(2 * i)..<(2 * i + 2)].map(Int.init) == top)
                let w = score == .softmax ? softmax(top.map { r[$0] })
                                          : top.map { affinity[$0] / top.map { affinity[$0] }.reduce(0, +) }
                #expect(maxDifference(row(out.score.doubles(), i, 2), w) < 1e-12)
            }
            #expect(out.auxLoss == nil)
            #expect(gradientCheckError([x]) { gate.route($0[0]).score } < 1e-6)
        }
    }

    @Test func topKAuxLossIsMegatronsLoadBalancingLoss() {
        var g = RandomGenerator(seed: 15)
        let (t, n, k) = (8, 4, 2)
        let gate = TopKGate(dModel: n, globalExpertCount: n, topK: k, balance: .aux, dtype: .float64, generator: &g)
        setIdentity(gate.linear)
        let x = randn([t, n], seed: 16), z = x.doubles()
        var counts = [Double](repeating: 0, count: n), meanP = [Double](repeating: 0, count: n)
        for i in 0..<t {
            let r = row(z, i, n)
            for e in topIndices(r, k) { counts[e] += 1 }
            for (e, p) in softmax(r).enumerated() { meanP[e] += p / Double(t) }
        }
        let expected = Double(n) * (0..<n).reduce(0) { $0 + counts[$1] / Double(t * k) * meanP[$1] }
        #expect(Swift.abs(gate.route(x).auxLoss!.item() - expected) < 1e-12)
        #expect(gradientCheckError([x]) { gate.route($0[0]).auxLoss!.reshaped([1]) } < 1e-6)
    }

    /// A skewed gate (expert 0 gets nearly every token) balances under bias updates alone.
    @Test(arguments: ["topk", "gshard", "switch", "noisy"])
    func biasUpdatesBalanceASkewedGate(gateName: String) {
        var g = RandomGenerator(seed: 17)
        let (n, d) = (4, 8)
        let k = gateName == "switch" ? 1 : 2
        let layer = MoELayer.mlp(dModel: d, hidden: 8, expertCount: n, topK: k, gate: GateSpec.named(gateName)!,
                                 capacityFactor: CapacityFactor(training: 100, eval: 100), balance: .bias, biasUpdateRate: 0.001,
                                 dtype: .float64, generator: &g)
        // Logits spread over tokens (weights N(0, 1)), with expert 0 ahead by about 5 for every token.
        let x = randn([256, d], seed: 18, shift: 1)
        let linear: Linear? = (layer.gate as? TopKGate)?.linear ?? (layer.gate as? GShardGate)?.linear ?? (layer.gate as? SwitchGate)?.linear
        if let linear {
            linear.weight.value = randn([n, d], seed: 24)
            linear.bias!.value = Tensor([5.0, 0, 0, 0], shape: [n]) - linear.weight.value.sum(lastAxis: ())
        } else {
            let noisy = layer.gate as! NoisyTopKGate
            noisy.wGate.value = randn([d, n], seed: 24) + Tensor((0..<(d * n)).map { $0 % n == 0 ? 0.75 : 0.0 }, shape: [d, n])
        }
        let monitor = LoadMonitor.install(in: layer)
        func step() -> LoadStatistics {
            _ = layer(x)
            let load = monitor.interval()[0].load
            monitor.reset()
            monitor.finishStep()
            return load
        }
        let before = step().maxOverMean, ceiling = Double(n) / Double(k)
        #expect(before > 0.7 * ceiling, "\(gateName): the skewed gate must start unbalanced (max/mean \(before) of \(ceiling))")
        for _ in 0..<1000 { _ = step() }
        let last = (0..<20).map { _ in step().maxOverMean }
        let mean = last.reduce(0, +) / Double(last.count)
        #expect(mean < 1.15 && last.max()! < 1.25, "\(gateName): max/mean \(before) → \(last) after 1000 bias updates")
        let bias = (layer.gate as! any BiasBalancedGate).expertBias!.value.doubles()
        #expect(bias[0] == bias.min()!, "expert 0's bias went down the most: \(bias)")
    }

    @Test func sequenceBalanceLossMatchesDeepSeekV3sFormula() {
        var g = RandomGenerator(seed: 19)
        let (s, l, n, k) = (3, 4, 4, 2)
        let gate = TopKGate(dModel: n, globalExpertCount: n, topK: k, balance: .bias, score: .sigmoid, dtype: .float64, generator: &g)
        setIdentity(gate.linear)
        let x = randn([s * l, n], seed: 20), z = x.doubles()
        let out = gate.route(x)
        var expected = 0.0
        for q in 0..<s {
            var f = [Double](repeating: 0, count: n), p = [Double](repeating: 0, count: n)
            for i in (q * l)..<((q + 1) * l) {
                let sig = row(z, i, n).map { 1 / (1 + exp(-$0)) }, total = sig.reduce(0, +)
                for e in topIndices(sig, k) { f[e] += Double(n) / Double(k * l) }
                for e in 0..<n { p[e] += sig[e] / total / Double(l) }
            }
            expected += (0..<n).reduce(0) { $0 + f[$1] * p[$1] } / Double(s)
        }
        let loss = GateMath.sequenceBalanceLoss(probabilities: out.probabilities!, expert: out.expert, sequenceLength: l)
        #expect(Swift.abs(loss.item() - expected) < 1e-12)
        #expect(gradientCheckError([x]) { xs in
            let r = gate.route(xs[0])
            return GateMath.sequenceBalanceLoss(probabilities: r.probabilities!, expert: r.expert, sequenceLength: l).reshaped([1])
        } < 1e-6)
    }

    @Test func theLayerAttachesTheWeightedSequenceBalanceLoss() {
        var g = RandomGenerator(seed: 25)
        let layer = MoELayer.mlp(dModel: 4, hidden: 6, expertCount: 4, topK: 2, balance: .bias, dtype: .float64, generator: &g)
        layer.sequenceBalanceWeight = 0.5
        let x = randn([2, 5, 4], seed: 26), w = randn([2, 5, 4], seed: 27)
        let gate = (layer.gate as! TopKGate).linear.weight
        gate.grad = nil
        (layer(x) * w).sum().backward()
        let attached = gate.grad!.doubles()
        gate.grad = nil
        let result = layer.forward(x)
        #expect(result.auxLoss == nil && result.sequenceBalanceLoss != nil)
        ((result.output * w).sum() + result.sequenceBalanceLoss! * 0.5).backward()
        #expect(maxDifference(attached, gate.grad!.doubles()) < 1e-12)
        #expect(layer.sequenceBalanceWeight > 0 && result.sequenceBalanceLoss!.item() > 0)
    }

    // MARK: Shared experts

    @Test func sharedExpertsAddADenseMLPToTheRoutedOutput() {
        var g = RandomGenerator(seed: 21)
        let (t, d, h) = (5, 4, 6)
        let layer = MoELayer.mlp(dModel: d, hidden: h, expertCount: 3, topK: 2, dtype: .float64, generator: &g)
        let x = randn([t, d], seed: 22)
        let routed = layer.forward(x).output.doubles()
        let shared = MLP(d, hidden: 2 * h, initStd: 0.3, dtype: .float64, generator: &g)
        layer.sharedExperts = shared
        let out = layer.forward(x).output.doubles()
        // The dense MLP by loops: fc2(gelu_tanh(fc1(x))).
        let w1 = shared.fc1.weight.value.doubles(), b1 = shared.fc1.bias!.value.doubles()
        let w2 = shared.fc2.weight.value.doubles(), b2 = shared.fc2.bias!.value.doubles(), xs = x.doubles()
        func gelu(_ v: Double) -> Double { 0.5 * v * (1 + tanh((2 / Double.pi).squareRoot() * (v + 0.044715 * v * v * v))) }
        var expected: [Double] = []
        let wide = 2 * h
        for i in 0..<t {
            var hidden = [Double](repeating: 0, count: wide)
            for j in 0..<wide {
                var v: Double = b1[j]
                for c in 0..<d { v += w1[j * d + c] * xs[i * d + c] }
                hidden[j] = gelu(v)
            }
            for o in 0..<d {
                var v: Double = b2[o]
                for j in 0..<wide { v += w2[o * wide + j] * hidden[j] }
                expected.append(routed[i * d + o] + v)
            }
        }
        #expect(maxDifference(out, expected) < 1e-12)
        #expect(gradientCheckError([x]) { layer.forward($0[0]).output } < 1e-6)
        #expect(parameterGradientError(shared.parameters()) { (layer.forward(x).output * x).sum() } < 1e-5)
        #expect(layer.activeParameterCount == layer.gate.parameterCount + 2 * layer.experts.parameterCount / 3 + shared.parameterCount)
    }

    @Test func moefyBuildsSharedExpertsAsWideAsTheRoutedOnesTimesS() {
        var g = RandomGenerator(seed: 23)
        let model = GPT(GPTConfig(vocabSize: 16, contextLength: 8, layers: 2, dModel: 8, heads: 2, mlpHidden: 32), generator: &g)
        moefy(model, expertCount: 4, topK: 2, sharedExperts: 2, generator: &g)
        let named = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.name, $0.parameter) })
        let fc1 = named["blocks.0.mlp.sharedExperts.fc1.weight"]!
        #expect(fc1.shape == [2 * 16, 8])   // 2 shared experts of width 32 / 2
        #expect(fc1.group == .shared && named["blocks.1.mlp.sharedExperts.fc2.bias"]!.group == .shared)
        #expect(named["blocks.0.mlp.experts.fc1.weight"]!.group == .expert)
    }

    // MARK: Collapse

    @Test func collapseWatchReportsLayersCollapsedForSeveralIntervals() {
        var watch = CollapseWatch(fraction: 0.9, intervals: 3)
        let collapsed = LoadStatistics(routedCounts: [100, 100, 0, 0, 0, 0, 0, 0], keptCounts: [100, 100, 0, 0, 0, 0, 0, 0], tokenCount: 100, topK: 2)
        let balanced = LoadStatistics(routedCounts: [25, 25, 25, 25, 25, 25, 25, 25], keptCounts: [25, 25, 25, 25, 25, 25, 25, 25], tokenCount: 100, topK: 2)
        #expect(watch.isCollapsed(collapsed) && !watch.isCollapsed(balanced))
        #expect(watch.observe([("a", collapsed), ("b", balanced)]).isEmpty)
        #expect(watch.observe([("a", collapsed), ("b", collapsed)]).isEmpty)
        let third = watch.observe([("a", collapsed), ("b", collapsed)])
        #expect(third.map(\.name) == ["a"] && third[0].ceiling == 4 && third[0].maxOverMean == 4)
        #expect(watch.observe([("a", balanced), ("b", collapsed)]).map(\.name) == ["b"])
        #expect(watch.observe([("a", collapsed), ("b", balanced)]).isEmpty)
    }
}
