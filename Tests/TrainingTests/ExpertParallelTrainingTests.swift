import Distributed
import NN
import Testing
@testable import Training

/// Expert-parallel training with W thread ranks equals one rank training on the concatenated batch
/// (MOE_SEMANTICS §3's gradient convention): each rank holds `N / W_ep` experts, tokens cross ranks
/// by all-to-all, expert gradients are divided by `W_ep` and averaged over the replicas, and the
/// balance loss counts the global batch. The reference is a plain one-rank run of the same seed and
/// global batch; the sharded experts are gathered back (rank r of the first expert-parallel group
/// holds experts r·E ..< (r+1)·E) and compared with its parameters.
@Suite("Expert-parallel training", .serialized)
struct ExpertParallelTrainingTests {
    static let steps = 20

    /// The tiny model with 4 experts, top-2 (no capacity, no noise), in every block. `balance`:
    /// `none` (FastMoE's gate) or `aux` (the Switch/Megatron loss, weighted high enough to matter).
    /// Other gates come with their own top-k and capacity in `extra`.
    static func settings(out: String, batchSize: Int, balance: String, steps: Int = steps,
                         _ extra: [String: ConfigValue] = [:]) -> [String: ConfigValue] {
        var v = tinyRun(out: out, steps: steps, ["batch_size": .int(batchSize), "log_every": .int(1), "eval_batches": .int(1),
                                                "experts": .int(4), "top_k": .int(2), "gate": .string("topk"),
                                                "balance": .string(balance), "balance_weight": .double(balance == "aux" ? 0.1 : 0)])
        for (k, x) in extra { v[k] = x }
        return v
    }

    struct RankResult: @unchecked Sendable {
        var losses: [Double] = []
        var valLoss = Double.nan
        var parameters: [String: [Double]] = [:]
        var expertNames: Set<String> = []
    }

    static func train(_ trainer: Trainer) throws -> RankResult {
        var result = RankResult()
        trainer.onEvent = { if case .step(let p) = $0 { result.losses.append(p.loss) } }
        let summary = try trainer.run()
        result.valLoss = summary.finalValLoss
        result.parameters = Dictionary(uniqueKeysWithValues: trainer.model.namedParameters().map { ($0.name, $0.parameter.value.doubles()) })
        result.expertNames = Set(trainer.model.namedParameters().filter { $0.parameter.group == .expert }.map(\.name))
        return result
    }

    /// Every rank's parameters with the experts of ranks `0 ..< expertParallel` concatenated in
    /// expert order (each tensor's first axis is the expert, so the flat values just follow each other).
    static func gathered(_ ranks: [RankResult], expertParallel: Int) -> [String: [Double]] {
        var out = ranks[0].parameters
        for name in ranks[0].expertNames { out[name] = (0..<expertParallel).flatMap { ranks[$0].parameters[name]! } }
        return out
    }

    static func expectClose(_ got: RankResult, _ all: [String: [Double]], to reference: RankResult, _ label: String) throws {
        #expect(got.losses.count == steps && reference.losses.count == steps, "\(label): \(got.losses.count) losses")
        for (step, (a, b)) in zip(got.losses, reference.losses).enumerated() {
            #expect(abs(a - b) <= 1e-5 * max(1, abs(b)), "\(label) step \(step + 1): loss \(a), one rank \(b)")
        }
        #expect(abs(got.valLoss - reference.valLoss) <= 1e-5 * max(1, abs(reference.valLoss)),
                "\(label): validation loss \(got.valLoss), one rank \(reference.valLoss)")
        var worst = (0.0, "")
        for (name, want) in reference.parameters {
            let have = try #require(all[name], "\(label): parameter \(name) missing")
            #expect(have.count == want.count, "\(label): \(name) has \(have.count) values, one rank \(want.count)")
            let d = zip(have, want).map { abs($0 - $1) }.max() ?? 0
            if d > worst.0 { worst = (d, name) }
        }
        #expect(worst.0 <= 5e-5, "\(label): largest weight difference to one rank \(worst.0) in \(worst.1)")
    }

    static func compare(worldSize: Int, expertParallel: Int, balance: String, _ gate: [String: ConfigValue] = [:]) throws {
        let dir = TemporaryDirectory()
        let reference = try train(try Trainer.prepare(overrides: settings(out: dir.file("one"), batchSize: 8, balance: balance, gate)))
        let ranks = try ThreadProcessGroup.run(worldSize: worldSize) { group in
            let trainer = try Trainer.prepare(overrides: settings(out: dir.file("ep"), batchSize: 8 / worldSize, balance: balance,
                                                                  gate.merging(["expert_parallel": .int(expertParallel)]) { $1 }),
                                              world: { _ in group })
            #expect(trainer.expertLayout?.size == expertParallel)
            // Each rank holds its share of the experts: [E, h, d] with E = N / W_ep.
            let fc1 = trainer.model.namedParameters().first { $0.name == "blocks.0.mlp.experts.fc1.weight" }!.parameter
            #expect(fc1.shape[0] == 4 / expertParallel)
            return try train(trainer)
        }
        let label = "W = \(worldSize), W_ep = \(expertParallel), balance \(balance) \(gate)"
        try expectClose(ranks[0], gathered(ranks, expertParallel: expertParallel), to: reference, label)
        // The load in the metrics is the global batch's: every expert's count summed over the ranks,
        // as one rank counts them (the routing is the same, so the counts are, step by step).
        func counts(_ run: String) throws -> [[Int]] {
            try MetricsLog.read(path: dir.file("\(run)/metrics.jsonl")).compactMap { record -> [Int]? in
                guard case .train(let r) = record else { return nil }
                return r.moe?.flatMap(\.counts)
            }
        }
        let (epCounts, oneCounts) = (try counts("ep"), try counts("one"))
        #expect(epCounts.count == steps && epCounts.allSatisfy { $0.count == 8 }, "\(label): loads \(epCounts)")
        #expect(epCounts == oneCounts, "\(label): expert loads \(epCounts) differ from one rank's \(oneCounts)")
        // Replica groups end equal, bit for bit: rank r and rank r + W_ep hold the same experts.
        for r in expertParallel..<worldSize {
            #expect(ranks[r].parameters == ranks[r % expertParallel].parameters, "\(label): rank \(r) differs from its replica \(r % expertParallel)")
        }
    }

    @Test(arguments: [2, 4]) func expertParallelTopKMatchesOneRank(worldSize: Int) throws {
        try Self.compare(worldSize: worldSize, expertParallel: worldSize, balance: "none")
    }

    @Test(arguments: [2, 4]) func expertParallelWithTheBalanceLossMatchesOneRank(worldSize: Int) throws {
        try Self.compare(worldSize: worldSize, expertParallel: worldSize, balance: "aux")
    }

    /// Two expert-parallel groups of 2 on 4 ranks: experts replicated twice, averaged over replicas.
    @Test func twoGroupsOfTwoOnFourRanksMatchOneRank() throws {
        try Self.compare(worldSize: 4, expertParallel: 2, balance: "aux")
    }

    /// Gates with capacity drops (a small factor that binds) and random draws (GShard's random
    /// routing, Switch's jitter, the noisy gate's noise and its cv² losses): the ranks route the global
    /// batch as one rank does, so training matches it too.
    @Test(arguments: [("gshard", 2, 0.8), ("switch", 1, 0.8), ("noisy", 2, nil)] as [(String, Int, Double?)])
    func capacityAndNoiseGatesMatchOneRank(gate: String, topK: Int, capacityFactor: Double?) throws {
        var options: [String: ConfigValue] = ["gate": .string(gate), "top_k": .int(topK)]
        if let capacityFactor { options["capacity_factor"] = .double(capacityFactor) }
        try Self.compare(worldSize: 4, expertParallel: 2, balance: "aux", options)
    }

    @Test func layoutsThatDoNotDivideAreRefused() throws {
        let dir = TemporaryDirectory()
        /// Each rank's error from preparing a run with `--expert-parallel expertParallel` ("" if none).
        func prepareErrors(worldSize: Int, expertParallel: Int, out: String) throws -> [String] {
            try ThreadProcessGroup.run(worldSize: worldSize) { group -> String in
                do {
                    _ = try Trainer.prepare(overrides: Self.settings(out: dir.file(out), batchSize: 2, balance: "none",
                                                                     ["expert_parallel": .int(expertParallel)]),
                                            world: { _ in group })
                    return ""
                } catch { return "\(error)" }
            }
        }
        let errors = try prepareErrors(worldSize: 4, expertParallel: 3, out: "bad")
        // 3 does not divide the 4 experts: the config is refused before any rank splits the world.
        #expect(errors.allSatisfy { $0.contains("--expert-parallel is 3 but --experts 4 does not split evenly") }, "\(errors)")
        let world = try prepareErrors(worldSize: 2, expertParallel: 4, out: "bad2")
        #expect(world.allSatisfy { $0.contains("--expert-parallel 4 does not divide the 2 ranks") }, "\(world)")
    }
}
