import Distributed
import NN
import Testing
@testable import Training

/// Data-parallel training with W thread ranks (`ThreadProcessGroup`) equals one rank training on the
/// concatenated batch: W ranks of `b` windows draw the global batch of `W·b` exactly as the one-rank
/// run with batch `W·b` does, average their gradients, clip by the global norm, and so compute the
/// same losses and end with the same weights, up to float32 rounding (the one-rank run sums a batch's
/// rows in another order).
@Suite("Data-parallel training", .serialized)
struct DataParallelTrainingTests {
    /// What one rank saw: the losses rank 0 reported, the final weights, and how many events it got.
    struct RankResult: @unchecked Sendable {
        var losses: [Double] = []
        var valLoss = Double.nan
        var parameters: [String: [Double]] = [:]
        var events = 0
    }

    static let steps = 20

    /// The tiny model: dense, or 4 experts top-2 in every block (topk gate: no capacity drops and no
    /// noise; no balance loss), the experts replicated on every rank (`expert_parallel` 1: plain data
    /// parallelism; ExpertParallelTrainingTests spreads them).
    static func settings(out: String, batchSize: Int, moe: Bool) -> [String: ConfigValue] {
        var v = tinyRun(out: out, steps: steps, ["batch_size": .int(batchSize), "log_every": .int(1), "eval_batches": .int(1)])
        if moe {
            v["experts"] = .int(4)
            v["top_k"] = .int(2)
            v["gate"] = .string("topk")
            v["balance_weight"] = .double(0)
            v["expert_parallel"] = .int(1)
        }
        return v
    }

    /// Trains with `trainer` and collects what rank 0 reports.
    static func train(_ trainer: Trainer) throws -> RankResult {
        var result = RankResult()
        trainer.onEvent = { event in
            result.events += 1
            if case .step(let p) = event { result.losses.append(p.loss) }
        }
        let summary = try trainer.run()
        result.valLoss = summary.finalValLoss
        result.parameters = Dictionary(uniqueKeysWithValues: trainer.model.namedParameters().map { ($0.name, $0.parameter.value.doubles()) })
        return result
    }

    static func compare(worldSize: Int, moe: Bool) throws {
        let dir = TemporaryDirectory()
        let perRank = 8 / worldSize
        let reference = try train(try Trainer.prepare(overrides: settings(out: dir.file("one-rank"), batchSize: 8, moe: moe)))
        let ranks = try ThreadProcessGroup.run(worldSize: worldSize) { group in
            // Rank 0 writes to `dp`; the others are pointed elsewhere and must create nothing there.
            let out = dir.file(group.rank == 0 ? "dp" : "dp-rank\(group.rank)")
            return try train(try Trainer.prepare(overrides: settings(out: out, batchSize: perRank, moe: moe), world: { _ in group }))
        }
        let rank0 = ranks[0]
        #expect(rank0.losses.count == steps && reference.losses.count == steps)
        for (step, (a, b)) in zip(rank0.losses, reference.losses).enumerated() {
            #expect(abs(a - b) <= 1e-5 * max(1, abs(b)), "step \(step + 1): \(worldSize) ranks loss \(a), one rank \(b)")
        }
        #expect(abs(rank0.valLoss - reference.valLoss) <= 1e-5 * max(1, abs(reference.valLoss)),
                "final validation loss: \(worldSize) ranks \(rank0.valLoss), one rank \(reference.valLoss)")
        var worst = 0.0
        for (name, want) in reference.parameters {
            let got = try #require(rank0.parameters[name], "parameter \(name) missing on rank 0")
            worst = max(worst, zip(got, want).map { abs($0 - $1) }.max() ?? 0)
        }
        #expect(worst <= 5e-5, "largest weight difference between \(worldSize) ranks and one rank: \(worst)")
        // The replicas never drift apart: every rank ends with rank 0's weights, bit for bit.
        for r in 1..<worldSize {
            #expect(ranks[r].parameters == rank0.parameters, "rank \(r)'s weights differ from rank 0's")
            #expect(ranks[r].events == 0, "rank \(r) emitted \(ranks[r].events) events; only rank 0 reports")
            #expect(!FileSystem.exists(dir.file("dp-rank\(r)")), "rank \(r) created its output directory")
        }
        #expect(FileSystem.exists(dir.file("dp/metrics.jsonl")))
    }

    /// A stop request seen by one rank only (a signal that reached it first) ends every rank after the
    /// same step, and rank 0 writes that step's checkpoint; no rank is left waiting in a collective.
    @Test func aStopOnOneRankStopsEveryRankAfterTheSameStep() throws {
        let dir = TemporaryDirectory()
        let out = dir.file("run")
        let steps = try ThreadProcessGroup.run(worldSize: 2) { group -> (Int, Bool) in
            let trainer = try Trainer.prepare(overrides: tinyRun(out: out, steps: 10, ["batch_size": .int(2), "eval_batches": .int(1)]),
                                              world: { _ in group })
            var asked = 0
            trainer.shouldStop = {
                asked += 1
                return group.rank == 1 && asked >= 6  // rank 1 asks twice a step: during step 3
            }
            let summary = try trainer.run()
            return (trainer.step, summary.interrupted)
        }
        #expect(steps[0].0 == steps[1].0 && steps[0].0 < 10, "ranks stopped at steps \(steps.map(\.0))")
        #expect(steps.allSatisfy { $0.1 })
        #expect(FileSystem.exists(out + "/checkpoint-\(steps[0].0)"))
    }

    @Test(arguments: [2, 4]) func denseGPTMatchesOneRankOnTheGlobalBatch(worldSize: Int) throws {
        try Self.compare(worldSize: worldSize, moe: false)
    }

    @Test(arguments: [2, 4]) func moeGPTMatchesOneRankOnTheGlobalBatch(worldSize: Int) throws {
        try Self.compare(worldSize: worldSize, moe: true)
    }
}
