import Distributed
import TestSupport
import Testing
@testable import MoE
import NN
@testable import Tensors

/// `MoELayer.sharded(over:)` on a layer whose experts are an `ExpertList` of plain modules, built
/// whole from the same seed on every rank as the trainer builds models: on `W` thread ranks in
/// `W / W_ep` expert-parallel groups, with the trainer's gradient sync (shared gradients averaged over
/// the world; expert gradients divided by `W_ep` and averaged over their replicas), the ranks compute
/// the output and every gradient of the one-rank layer on the concatenated batch (MOE_SEMANTICS §3),
/// in float64. Each rank's objective is `Σ out·u / T` over its `T` tokens, the one rank's the same
/// sum over all `W·T` tokens divided by `W·T`, so the synced gradients are the one-rank gradients.
@Suite("Expert-list sharding over thread ranks")
struct ExpertListShardingTests {
    /// (W, W_ep).
    static let layouts = [(2, 2), (4, 4), (4, 2)]
    static let (d, h, n, tokens, topK) = (4, 5, 8, 8, 2)

    struct Run {
        var output: [Double], inputGradient: [Double], gateGradient: [Double]
        /// Each held expert's parameter gradients (zeros where it got no token), by global expert index.
        var expertGradients: [Int: [Double]]
        /// Each held expert's parameter values, by global expert index.
        var expertValues: [Int: [Double]]
        var localExpertCount: Int
        var expertGroups: Set<ParameterGroup>
    }

    /// The layer every rank builds from the seed: a top-k gate over `N` MLP experts in a list.
    static func layer() -> MoELayer {
        var g = RandomGenerator(seed: 31)
        let gate = TopKGate(dModel: d, globalExpertCount: n, topK: topK, dtype: .float64, generator: &g)
        return MoELayer(dModel: d, gate: gate, experts: ExpertList((0..<n).map { _ in MLPExpert(dModel: d, hidden: h, generator: &g) }))
    }

    /// `x` and the upstream `u` of the concatenated batch, `[W·T, d]`.
    static func batch(ranks: Int) -> (Tensor, Tensor) {
        var g = RandomGenerator(seed: 32)
        return (Tensor.randomNormal([ranks * tokens, d], dtype: .float64, generator: &g),
                Tensor.randomNormal([ranks * tokens, d], dtype: .float64, generator: &g))
    }

    /// One forward and backward of `layer`; its local expert `i` is global expert `first + i`.
    static func run(_ layer: MoELayer, _ x: Tensor, _ u: Tensor, first: Int, backward: (Tensor) -> Void) -> Run {
        let xl = x.detached().requiringGradient()
        let out = layer(xl)
        backward((out * u).sum() * (1 / Double(x.shape[0])))
        let list = layer.experts as! ExpertList
        var gradients: [Int: [Double]] = [:], values: [Int: [Double]] = [:]
        for (i, expert) in list.experts.enumerated() {
            gradients[first + i] = expert.parameters().flatMap { $0.grad?.doubles() ?? [Double](repeating: 0, count: $0.value.count) }
            values[first + i] = expert.parameters().flatMap { $0.value.doubles() }
        }
        return Run(output: out.doubles(), inputGradient: xl.grad!.doubles(), gateGradient: layer.gate.parameters().flatMap { $0.grad!.doubles() },
                   expertGradients: gradients, expertValues: values, localExpertCount: list.localExpertCount,
                   expertGroups: Set(list.parameters().map(\.group)))
    }

    @Test(arguments: layouts)
    func shardedListEqualsOneRankOnTheConcatenatedBatch(_ layout: (Int, Int)) throws {
        let (w, wep) = layout, e = Self.n / wep, t = Self.tokens
        let (x, u) = Self.batch(ranks: w)
        let reference = Self.run(Self.layer(), x, u, first: 0) { $0.backward() }
        let ranks = try ThreadProcessGroup.run(worldSize: w) { world -> Run in
            let r = world.rank
            // The trainer's layout (ExpertLayout): groups of W_ep consecutive ranks, replicas across them.
            let expertGroup = world.split(color: r / wep, key: r)
            let replicas = world.split(color: r % wep, key: r)
            let layer = Self.layer().sharded(over: expertGroup)
            let sync = try GradientSync(parameters: layer.namedParameters()) { group in
                switch group {
                case .shared: ParameterPlacement(replicas: world)
                case .expert: ParameterPlacement(replicas: replicas, shards: expertGroup, scale: 1 / Double(wep))
                }
            }
            return Self.run(layer, x.rows((r * t)..<((r + 1) * t)), u.rows((r * t)..<((r + 1) * t)), first: (r % wep) * e) { sync.backward($0) }
        }

        let c = "W=\(w) W_ep=\(wep)"
        #expect(maxDifference(ranks.flatMap(\.output), reference.output) < 1e-12, "\(c): output")
        // Each rank's input gradient is of its own objective, W times the one rank's share.
        #expect(maxDifference(ranks.flatMap(\.inputGradient), reference.inputGradient.map { $0 * Double(w) }) < 1e-12, "\(c): input gradient")
        for (r, run) in ranks.enumerated() {
            #expect(run.localExpertCount == e && run.expertGroups == [.expert], "\(c): rank \(r) holds \(run.localExpertCount) experts in \(run.expertGroups)")
            #expect(maxDifference(run.gateGradient, reference.gateGradient) < 1e-12, "\(c): rank \(r) gate gradient")
            #expect(Set(run.expertValues.keys) == Set(((r % wep) * e)..<((r % wep + 1) * e)), "\(c): rank \(r) holds experts \(run.expertValues.keys.sorted())")
            for (g, values) in run.expertValues {
                #expect(values == reference.expertValues[g], "\(c): rank \(r) holds another expert's weights as expert \(g)")
                #expect(maxDifference(run.expertGradients[g]!, reference.expertGradients[g]!) < 1e-12, "\(c): rank \(r) expert \(g) gradient")
            }
        }
        // Every expert computed something, so the gradients above are not all zeros.
        #expect((0..<Self.n).allSatisfy { reference.expertGradients[$0]!.contains { $0 != 0 } })
    }

    /// The names `ExpertListNames` finds are those `Module` gives the list's experts, and renumbering
    /// moves the expert index only (optimizer state included), nothing else.
    @Test func namesRenumberTheExpertIndexOnly() {
        let layer = Self.layer(), lists = ExpertListNames(layer)
        #expect(lists.prefixes == ["experts.experts"])
        let names = layer.namedParameters().map(\.name)
        #expect(names.contains("experts.experts.7.fc2.bias") && names.allSatisfy { $0.hasPrefix("gate.") || lists.expert(in: $0) != nil }, "\(names)")

        let model = ExpertListNames(prefixes: ["blocks.1.mlp.experts.experts"])
        #expect(model.renumbered("blocks.1.mlp.experts.experts.3.fc1.weight", by: 4) == "blocks.1.mlp.experts.experts.7.fc1.weight")
        #expect(model.renumbered("exp_avg.blocks.1.mlp.experts.experts.13.fc1.weight", by: -12) == "exp_avg.blocks.1.mlp.experts.experts.1.fc1.weight")
        #expect(model.expert(in: "exp_avg_sq.blocks.1.mlp.experts.experts.5.scale")?.index == 5)
        for other in ["blocks.0.mlp.experts.experts.3.fc1.weight", "blocks.1.mlp.gate.linear.weight", "blocks.1.mlp.experts.experts.x.w", "step"] {
            #expect(model.expert(in: other) == nil && model.renumbered(other, by: 4) == other, "\(other)")
        }
    }
}
