import Distributed
import TestSupport
import Testing
@testable import MoE
import NN
@testable import Tensors

/// One expert-parallel configuration: `W` thread ranks, `E` experts each, `T` tokens each.
struct ExpertParallelCase: CustomTestStringConvertible, Sendable {
    let ranks: Int, localExperts: Int, tokens: Int, topK: Int
    /// Every token prefers expert 0 (so rank 0's experts take everything, other ranks' experts none,
    /// and ranks whose experts are elsewhere send all their rows away).
    var skewed = false
    var batched = true
    var testDescription: String {
        "W=\(ranks) E=\(localExperts) T=\(tokens) k=\(topK)\(skewed ? " skewed" : "")\(batched ? "" : " expert list")"
    }
}

/// The expert-parallel layer on `W` thread ranks against one rank holding all `N = W·E` experts on
/// the concatenated batch (MOE_SEMANTICS §3): the outputs, the input gradients, the gate gradient
/// summed over ranks and every expert's gradient on the rank that holds it, in float64. Each rank's
/// objective is `Σ out·u` over its tokens, so the one-rank objective is their sum.
@Suite("Expert parallelism over thread ranks")
struct ExpertParallelTests {
    static let cases = [
        ExpertParallelCase(ranks: 2, localExperts: 2, tokens: 5, topK: 1),
        ExpertParallelCase(ranks: 2, localExperts: 2, tokens: 5, topK: 2),
        ExpertParallelCase(ranks: 2, localExperts: 2, tokens: 6, topK: 3, batched: false),
        ExpertParallelCase(ranks: 4, localExperts: 2, tokens: 4, topK: 2),
        ExpertParallelCase(ranks: 4, localExperts: 1, tokens: 3, topK: 3),
        ExpertParallelCase(ranks: 2, localExperts: 2, tokens: 5, topK: 2, skewed: true),
        ExpertParallelCase(ranks: 4, localExperts: 2, tokens: 4, topK: 1, skewed: true, batched: false),
    ]

    /// What one run leaves: outputs and gradients as host arrays.
    struct Run {
        var output: [Double], inputGradient: [Double], gateGradient: [Double]
        /// Per expert held: fc1.w, fc1.b, fc2.w, fc2.b gradients concatenated.
        var expertGradients: [[Double]]
    }

    static func experts(_ list: [MLPExpert], batched: Bool) -> any Experts {
        batched ? batchedCopy(of: list) : ExpertList(list)
    }

    static func expertGradients(_ experts: any Experts) -> [[Double]] {
        if let list = experts as? ExpertList {
            return list.experts.map { e in e.parameters().flatMap { $0.grad?.doubles() ?? [Double](repeating: 0, count: $0.value.count) } }
        }
        let b = experts as! BatchedExperts
        let tensors = [b.fc1.weight, b.fc1.bias!, b.fc2.weight, b.fc2.bias!]
        return (0..<b.localExpertCount).map { e in
            tensors.flatMap { p -> [Double] in
                let per = p.value.count / p.value.shape[0]
                let g = p.grad?.doubles() ?? [Double](repeating: 0, count: p.value.count)
                return Array(g[(e * per)..<((e + 1) * per)])
            }
        }
    }

    /// Runs `layer` on `x` with upstream `u` and collects the results.
    static func run(_ layer: MoELayer, _ x: Tensor, _ u: Tensor) -> Run {
        let xl = x.detached().requiringGradient()
        let out = layer(xl)
        (out * u).sum().backward()
        let gate = layer.gate.parameters().flatMap { $0.grad!.doubles() }
        return Run(output: out.doubles(), inputGradient: xl.grad!.doubles(), gateGradient: gate, expertGradients: expertGradients(layer.experts))
    }

    @Test(arguments: cases)
    func layerEqualsOneRankOnTheConcatenatedBatch(_ c: ExpertParallelCase) throws {
        let (d, h) = (4, 5), n = c.ranks * c.localExperts, total = c.ranks * c.tokens
        var g = RandomGenerator(seed: UInt64(11 * n + c.topK))
        let list = (0..<n).map { _ in MLPExpert(dModel: d, hidden: h, generator: &g) }
        let gateWeight = Tensor.randomNormal([n, d], dtype: .float64, generator: &g)
        var gateBias = Tensor.randomNormal([n], std: 0.1, dtype: .float64, generator: &g)
        if c.skewed { gateBias = Tensor((0..<n).map { $0 == 0 ? 50.0 : 0.0 }) }
        let x = Tensor.randomNormal([total, d], dtype: .float64, generator: &g), u = Tensor.randomNormal([total, d], dtype: .float64, generator: &g)

        func gate() -> TopKGate {
            var unused = RandomGenerator(seed: 0)
            let gate = TopKGate(dModel: d, globalExpertCount: n, topK: c.topK, dtype: .float64, generator: &unused)
            gate.linear.weight.value = gateWeight.detached().contiguousCopy()
            gate.linear.bias!.value = gateBias.detached().contiguousCopy()
            return gate
        }
        func copies(_ experts: ArraySlice<MLPExpert>) -> [MLPExpert] {
            experts.map { e in
                var unused = RandomGenerator(seed: 0)
                let copy = MLPExpert(dModel: d, hidden: h, generator: &unused)
                for (p, q) in zip(copy.parameters(), e.parameters()) { p.value = q.value.detached().contiguousCopy() }
                return copy
            }
        }

        let reference = Self.run(MoELayer(dModel: d, gate: gate(), experts: Self.experts(copies(list[...]), batched: c.batched)), x, u)
        let ranks = try ThreadProcessGroup.run(worldSize: c.ranks) { group -> Run in
            let r = group.rank, e = c.localExperts
            let local = Self.experts(copies(list[(r * e)..<((r + 1) * e)]), batched: c.batched)
            let layer = MoELayer(dModel: d, gate: gate(), experts: local, exchange: AllToAllExchange(group: group, localExpertCount: e))
            return Self.run(layer, x.rows((r * c.tokens)..<((r + 1) * c.tokens)), u.rows((r * c.tokens)..<((r + 1) * c.tokens)))
        }

        #expect(maxDifference(ranks.flatMap(\.output), reference.output) < 1e-12, "\(c): output")
        #expect(maxDifference(ranks.flatMap(\.inputGradient), reference.inputGradient) < 1e-12, "\(c): input gradient")
        let gateSum = ranks.dropFirst().reduce(ranks[0].gateGradient) { zip($0, $1.gateGradient).map(+) }
        #expect(maxDifference(gateSum, reference.gateGradient) < 1e-12, "\(c): gate gradient summed over ranks")
        let expertGradients = ranks.flatMap(\.expertGradients)
        for expert in 0..<n {
            #expect(maxDifference(expertGradients[expert], reference.expertGradients[expert]) < 1e-12, "\(c): expert \(expert) gradient")
        }
        if c.skewed && c.topK == 1 {
            #expect(reference.expertGradients[n - 1].allSatisfy { $0 == 0 }, "\(c): the last expert should receive no token")
        }
    }

    /// The exchange's two row orders are inverse permutations, expert-major as MOE_SEMANTICS §3 lays out.
    @Test func receivedRowsAreExpertMajorSourceRankMinor() {
        let layout = ExchangeLayout(sendCounts: [0, 0, 0], receivedPerExpert: [[2, 0], [1, 3], [0, 1]])
        let order = ExpertMajorOrder(layout, device: .cpu)
        // Peer-major arrival: rank 0 → e0 rows 0,1; rank 1 → e0 row 2, e1 rows 3,4,5; rank 2 → e1 row 6.
        #expect(order.expertMajor.int32s() == [0, 1, 2, 3, 4, 5, 6])
        let layout2 = ExchangeLayout(sendCounts: [0, 0], receivedPerExpert: [[1, 2], [2, 1]])
        let order2 = ExpertMajorOrder(layout2, device: .cpu)
        // Arrival: rank 0 → e0: 0, e1: 1,2; rank 1 → e0: 3,4, e1: 5. Expert-major: e0 (0, 3, 4), e1 (1, 2, 5).
        #expect(order2.expertMajor.int32s() == [0, 3, 4, 1, 2, 5])
        #expect(order2.peerMajor.int32s() == [0, 3, 4, 1, 2, 5].enumerated().sorted { $0.element < $1.element }.map { Int32($0.offset) })
        #expect(layout2.tokensPerLocalExpert == [3, 3])
    }
}
