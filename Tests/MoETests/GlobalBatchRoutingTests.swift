import Distributed
import TestSupport
import Testing
@testable import MoE
import NN
@testable import Tensors

/// One layout of the global batch: `W` thread ranks in `W / W_ep` expert-parallel groups of `W_ep`.
struct GlobalBatchCase: CustomTestStringConvertible, Sendable {
    enum Kind: String, Sendable { case gshard, switchGate, noisy }
    let kind: Kind, ranks: Int, expertParallel: Int
    var testDescription: String { "\(kind) W=\(ranks) W_ep=\(expertParallel)" }
}

/// Gates whose routing covers the global batch (`batchGroup`: capacity, random draws; and
/// `statisticsGroup`: balance losses) in training mode, on `W` thread ranks, against one rank holding
/// all `N` experts on the concatenated batch (MOE_SEMANTICS §3 and §4's last paragraph), in float64:
/// output, balance loss, the input gradient, the gate's and every expert's gradient.
///
/// Each rank's objective is `Σ out·u + (λ/W)·auxLoss` over its tokens and the one rank's
/// `Σ out·u + λ·auxLoss`, so the one-rank gradients are the sums over the ranks (the global balance
/// losses' gradients are made for the data-parallel average, hence `λ/W`); an expert's gradient is
/// summed over its replicas. Capacities bind (a small factor, routing skewed to expert 0), and the
/// same layout with each rank routing alone (`batchGroup` and `statisticsGroup` nil) must differ,
/// so the test can tell the two apart.
@Suite("Global-batch routing over thread ranks")
struct GlobalBatchRoutingTests {
    static let cases: [GlobalBatchCase] = [GlobalBatchCase.Kind.gshard, .switchGate, .noisy].flatMap { kind in
        [(2, 2), (4, 4), (4, 2), (2, 1)].map { GlobalBatchCase(kind: kind, ranks: $0.0, expertParallel: $0.1) }
    }
    static let (d, h, n, tokens, lambda) = (4, 5, 4, 6, 0.3)

    struct Run {
        var output: [Double], auxLoss: Double, inputGradient: [Double], gateGradient: [Double]
        /// Per expert held: fc1.w, fc1.b, fc2.w, fc2.b gradients concatenated.
        var expertGradients: [[Double]]
        var load: LoadStatistics
    }

    /// The gate of `kind`, the same weights on every rank (same seed), in float64.
    static func gate(_ kind: GlobalBatchCase.Kind) -> any Gate {
        var g = RandomGenerator(seed: 21)
        let gate: any Gate
        switch kind {
        case .gshard: gate = GShardGate(dModel: d, globalExpertCount: n, trainingCapacityFactor: 0.6, dtype: .float64, generator: &g)
        case .switchGate:
            gate = SwitchGate(dModel: d, globalExpertCount: n, trainingCapacityFactor: 0.8, jitter: .input(epsilon: 0.3),
                              dtype: .float64, generator: &g)
        case .noisy: gate = NoisyTopKGate(dModel: d, globalExpertCount: n, topK: 2, dtype: .float64, generator: &g)
        }
        // Skew towards experts 0 and 1, so that they overflow with first and second choices.
        if let linear = (gate as? GShardGate)?.linear ?? (gate as? SwitchGate)?.linear {
            linear.bias!.value = Tensor([1.5, 1.3, 0, 0] as [Double])
        }
        return gate
    }

    /// All `N` experts, the same on every rank.
    static func experts() -> BatchedExperts {
        var g = RandomGenerator(seed: 22)
        return BatchedExperts(localExpertCount: n, dModel: d, hidden: h, dtype: .float64, generator: &g)
    }

    /// Experts `range` of `all`, in tensors of their own.
    static func slice(_ all: BatchedExperts, _ range: Range<Int>) -> BatchedExperts {
        func rows(_ layer: GroupedLinear) -> GroupedLinear {
            GroupedLinear(weight: layer.weight.value.rows(range).contiguousCopy(), bias: layer.bias!.value.rows(range).contiguousCopy())
        }
        return BatchedExperts(fc1: rows(all.fc1), fc2: rows(all.fc2), activation: all.activation)
    }

    /// The concatenated batch `x` and the upstream gradient `u`, `[W·T, d]`.
    static func batch(ranks: Int) -> (Tensor, Tensor) {
        var g = RandomGenerator(seed: 23)
        let x = Tensor.randomNormal([ranks * tokens, d], dtype: .float64, generator: &g)
        return (x, Tensor.randomNormal([ranks * tokens, d], dtype: .float64, generator: &g))
    }

    /// One training forward and backward of `layer` on `x` with the objective `Σ out·u + weight·aux`.
    static func run(_ layer: MoELayer, _ x: Tensor, _ u: Tensor, auxWeight: Double) -> Run {
        layer.train(true)
        let xl = x.detached().requiringGradient()
        let result = layer.forward(xl)
        let aux = result.auxLoss!
        ((result.output * u).sum() + aux * auxWeight).backward()
        let experts = layer.experts as! BatchedExperts
        let tensors = [experts.fc1.weight, experts.fc1.bias!, experts.fc2.weight, experts.fc2.bias!]
        let perExpert = (0..<experts.localExpertCount).map { e in
            tensors.flatMap { p -> [Double] in
                let per = p.value.count / p.value.shape[0]
                return Array(p.grad!.doubles()[(e * per)..<((e + 1) * per)])
            }
        }
        return Run(output: result.output.doubles(), auxLoss: aux.item(), inputGradient: xl.grad!.doubles(),
                   gateGradient: layer.gate.parameters().flatMap { $0.grad!.doubles() }, expertGradients: perExpert, load: result.load)
    }

    /// The layer on every rank of `c`'s layout; `global` routes the global batch, else each rank alone.
    static func ranks(_ c: GlobalBatchCase, global: Bool) throws -> [Run] {
        let (x, u) = batch(ranks: c.ranks), t = tokens
        return try ThreadProcessGroup.run(worldSize: c.ranks) { world -> Run in
            let r = world.rank, wep = c.expertParallel, e = n / wep
            let expertGroup = world.split(color: r / wep, key: r)
            let gate = Self.gate(c.kind)
            if global {
                (gate as! any GlobalBatchRouting).batchGroup = world
                (gate as! any GlobalBalanceStatistics).statisticsGroup = world
            }
            let local = slice(experts(), (expertGroup.rank * e)..<((expertGroup.rank + 1) * e))
            let layer = MoELayer(dModel: d, gate: gate, experts: local,
                                 exchange: wep > 1 ? AllToAllExchange(group: expertGroup, localExpertCount: e) : nil)
            return run(layer, x.rows((r * t)..<((r + 1) * t)), u.rows((r * t)..<((r + 1) * t)), auxWeight: lambda / Double(c.ranks))
        }
    }

    @Test(arguments: cases)
    func layerEqualsOneRankOnTheConcatenatedBatch(_ c: GlobalBatchCase) throws {
        let (x, u) = Self.batch(ranks: c.ranks)
        let reference = Self.run(MoELayer(dModel: Self.d, gate: Self.gate(c.kind), experts: Self.experts()), x, u, auxWeight: Self.lambda)
        if c.kind != .noisy {
            #expect(zip(reference.load.keptCounts, reference.load.routedCounts).contains { $0 < $1 }, "\(c): no slot dropped by capacity")
        }
        let ranks = try Self.ranks(c, global: true)
        let tolerance = 1e-10
        #expect(maxDifference(ranks.flatMap(\.output), reference.output) < tolerance, "\(c): output")
        #expect(maxDifference(ranks.flatMap(\.inputGradient), reference.inputGradient) < tolerance, "\(c): input gradient")
        for (r, run) in ranks.enumerated() {
            #expect(Swift.abs(run.auxLoss - reference.auxLoss) < tolerance, "\(c): rank \(r) balance loss \(run.auxLoss), one rank \(reference.auxLoss)")
        }
        let gateSum = ranks.dropFirst().reduce(ranks[0].gateGradient) { zip($0, $1.gateGradient).map(+) }
        #expect(maxDifference(gateSum, reference.gateGradient) < tolerance, "\(c): gate gradient summed over ranks")
        // Rank r holds experts (r % W_ep)·E ..< (r % W_ep + 1)·E: sum each expert's gradient over its replicas.
        let e = Self.n / c.expertParallel
        for expert in 0..<Self.n {
            let holders = ranks.indices.filter { $0 % c.expertParallel == expert / e }
            let summed = holders.dropFirst().reduce(ranks[holders[0]].expertGradients[expert % e]) { zip($0, ranks[$1].expertGradients[expert % e]).map(+) }
            #expect(maxDifference(summed, reference.expertGradients[expert]) < tolerance, "\(c): expert \(expert) gradient")
        }

        // Each rank routing its own tokens alone is another computation.
        let alone = try Self.ranks(c, global: false)
        #expect(maxDifference(alone.flatMap(\.output), reference.output) > 1e-6, "\(c): routing each rank alone gives the one-rank output")
    }

    /// The offsets `GlobalBatch` sums from the exchanged counts, for the two-rank example worked out
    /// by hand in `RoutingTests.capacityOffsetDropsWhatTheConcatenatedBatchDrops`.
    @Test func capacityOffsetsFollowTheFormula() {
        // Rank 0's counts per choice: [1, 1], [1, 1]; rank 1's: [2, 0], [0, 2].
        let counts = Tensor([1, 1, 1, 1, 2, 0, 0, 2] as [Float], shape: [2, 4])
        func offset(_ r: Int, _ p: RoutingPriority) -> [Int32] { GlobalBatch.capacityOffset(counts, rank: r, topK: 2, priority: p).int32s() }
        #expect(offset(0, .choiceMajor) == [0, 0, 2, 0])
        #expect(offset(1, .choiceMajor) == [1, 1, 2, 2])
        #expect(offset(0, .tokenMajor) == [0, 0, 0, 0])
        #expect(offset(1, .tokenMajor) == [2, 2, 2, 2])
        // Rank 1's counts from its table: tokens (0, 1) and (0, 1), then with its second slot masked away.
        let rank1 = Tensor([0, 1, 0, 1] as [Int32], shape: [2, 2])
        #expect(GlobalBatch.routedCountsPerChoice(rank1, expertCount: 2, slotMask: nil).int32s() == [2, 0, 0, 2])
        let mask = Tensor([1, -1, 1, 1] as [Double], shape: [2, 2])
        #expect(GlobalBatch.routedCountsPerChoice(rank1, expertCount: 2, slotMask: mask).int32s() == [2, 0, 0, 1])
    }

    /// The gate assumes every rank holds `T` tokens; the dispatcher's download checks it.
    @Test func unequalTokenCountsStop() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = try ThreadProcessGroup.run(worldSize: 2) { world in
                var g = RandomGenerator(seed: 1)
                let gate = GShardGate(dModel: 4, globalExpertCount: 4, generator: &g)
                gate.batchGroup = world
                let layer = MoELayer(dModel: 4, gate: gate, experts: BatchedExperts(localExpertCount: 4, dModel: 4, hidden: 3, generator: &g))
                _ = layer.forward(Tensor.randomNormal([world.rank == 0 ? 3 : 5, 4], generator: &g))
            }
        }
        let message = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(message.contains("the ranks of the global batch hold 3, 5 tokens"), "\(message)")
    }
}
