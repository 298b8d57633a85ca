import Distributed
import NN
import Testing
@testable import Training

/// Resuming a data-parallel run: with the same ranks it continues exactly (every rank reads rank 0's
/// checkpoint); with another number of ranks it is refused, since the global batch would change.
@Suite("Data-parallel resume", .serialized)
struct DataParallelResumeTests {
    static func settings(out: String, steps: Int) -> [String: ConfigValue] {
        tinyRun(out: out, steps: steps, ["batch_size": .int(3), "eval_batches": .int(1)])
    }

    /// Final weights of every rank after a W = 2 run of 8 steps, straight or stopped at 4 and resumed.
    static func weights(_ dir: TemporaryDirectory, resumed: Bool) throws -> [[String: [UInt8]]] {
        let out = dir.file(resumed ? "resumed" : "straight")
        return try ThreadProcessGroup.run(worldSize: 2) { group in
            let first = try Trainer.prepare(overrides: settings(out: out, steps: 8), world: { _ in group })
            if !resumed {
                try first.run()
                return parameterBytes(first.model)
            }
            try first.run(stopAfter: 4)
            let second = try Trainer.prepare(resume: out, world: { _ in group })
            #expect(second.step == 4)
            try second.run()
            return parameterBytes(second.model)
        }
    }

    @Test func resumingWithTheSameRanksContinuesExactly() throws {
        let dir = TemporaryDirectory()
        let straight = try Self.weights(dir, resumed: false)
        let resumed = try Self.weights(dir, resumed: true)
        #expect(resumed[0] == straight[0], "rank 0's weights after resuming differ from the uninterrupted run's")
        #expect(resumed[1] == straight[1])
        #expect(straight[0] == straight[1])
        let state = try readText(dir.file("resumed/checkpoint-8/state.json"))
        #expect(state.contains("\"world_size\":2"))
    }

    @Test func resumingWithAnotherNumberOfRanksIsRefused() throws {
        let dir = TemporaryDirectory()
        let out = dir.file("run")
        _ = try ThreadProcessGroup.run(worldSize: 2) { group in
            try Trainer.prepare(overrides: Self.settings(out: out, steps: 2), world: { _ in group }).run()
        }
        let more: [String: ConfigValue] = ["steps": .int(4)]
        let alone = errorMessage { _ = try Trainer.prepare(overrides: more, resume: out) }
        #expect(alone == "--resume \(out): the run trained on 2 ranks (a global batch of 6 = 2 × 3 windows) but this job has 1; "
            + "another number of ranks would change the global batch and the data order, so the run would not continue exactly — "
            + "resume with 2 ranks (e.g. `fastmoe launch --nproc-per-node 2 -- train --resume ...`)")
        let four = try ThreadProcessGroup.run(worldSize: 4) { group in
            errorMessage { _ = try Trainer.prepare(overrides: more, resume: out, world: { _ in group }) }
        }
        #expect(four.allSatisfy { $0?.contains("but this job has 4") == true })
    }
}
