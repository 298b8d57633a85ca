import Distributed
import NN
import Tensors
import Testing
@testable import Training

/// Checkpoints of expert-parallel runs (thread ranks): each expert-parallel rank's shard under the
/// global names; `Checkpoint.merge` gives the one-rank checkpoint, whose one-rank evaluation equals
/// the sharded run's; a resume under another `--expert-parallel` re-shards the weights and AdamW's
/// state and continues as the uninterrupted run does; another number of experts is refused.
@Suite("Expert-parallel checkpoints", .serialized)
struct ExpertParallelCheckpointTests {
    static func settings(out: String, batchSize: Int, steps: Int, _ extra: [String: ConfigValue] = [:]) -> [String: ConfigValue] {
        var v = tinyRun(out: out, steps: steps, ["batch_size": .int(batchSize), "eval_batches": .int(1), "experts": .int(4),
                                                "top_k": .int(2), "gate": .string("topk"), "balance": .string("aux"),
                                                "balance_weight": .double(0.1), "keep_checkpoints": .int(0)])
        for (k, x) in extra { v[k] = x }
        return v
    }

    /// Trains on `ranks` thread ranks into `out` (every rank the same directory, as under a launcher)
    /// and returns each rank's parameters and rank 0's final validation loss.
    static func train(ranks: Int, expertParallel: Int, out: String, steps: Int, checkpointEvery: Int = 0,
                      resume: String? = nil) throws -> (parameters: [[String: [Double]]], valLoss: Double) {
        let results = try ThreadProcessGroup.run(worldSize: ranks) { group -> ([String: [Double]], Double) in
            let trainer = resume.map { path in
                { try Trainer.prepare(overrides: ["expert_parallel": .int(expertParallel)], resume: path, world: { _ in group }) }
            } ?? {
                try Trainer.prepare(overrides: settings(out: out, batchSize: 8 / ranks, steps: steps,
                                                        ["expert_parallel": .int(expertParallel), "checkpoint_every": .int(checkpointEvery)]),
                                    world: { _ in group })
            }
            let t = try trainer()
            let summary = try t.run()
            return (Dictionary(uniqueKeysWithValues: t.model.namedParameters().map { ($0.name, $0.parameter.value.doubles()) }), summary.finalValLoss)
        }
        return (results.map(\.0), results[0].1)
    }

    /// The one-rank view: experts of ranks 0 ..< W_ep concatenated (their first axis is the expert).
    static func gathered(_ ranks: [[String: [Double]]], expertParallel: Int) -> [String: [Double]] {
        var out = ranks[0]
        for name in ranks[0].keys where name.contains(".experts.") {
            out[name] = (0..<expertParallel).flatMap { ranks[$0][name]! }
        }
        return out
    }

    static func largestDifference(_ a: [String: [Double]], _ b: [String: [Double]]) -> Double {
        #expect(Set(a.keys) == Set(b.keys))
        return a.keys.map { name in zip(a[name]!, b[name]!).map { abs($0 - $1) }.max() ?? 0 }.max() ?? 0
    }

    @Test func shardsMergeIntoTheOneRankCheckpointAndEvaluateAlike() throws {
        let dir = TemporaryDirectory()
        let run = try Self.train(ranks: 4, expertParallel: 4, out: dir.file("ep"), steps: 4)
        let checkpoint = dir.file("ep/checkpoint-4")
        for r in 0..<4 {
            #expect(FileSystem.exists(checkpoint + "/" + ExpertShards.modelFile(r)) && FileSystem.exists(checkpoint + "/" + ExpertShards.optimizerFile(r)))
        }
        // Rank 0's file holds no expert; each shard one expert of every expert tensor, by global name.
        let shared = try SafeTensors.read(path: checkpoint + "/model.safetensors")
        #expect(!shared.names.contains { $0.contains(".experts.") } && shared.metadata["expert_shards"] == "4")
        let shard = try SafeTensors.read(path: checkpoint + "/" + ExpertShards.modelFile(2))
        #expect(shard.metadata["experts"] == "2..<3" && shard["blocks.1.mlp.experts.fc2.weight"]?.shape.first == 1)

        let (_, merged) = try Checkpoint.merge(checkpoint)
        #expect(merged == dir.file("ep/merged-4"))
        let file = try SafeTensors.read(path: merged + "/model.safetensors")
        #expect(file["blocks.0.mlp.experts.fc1.weight"]?.shape.first == 4 && file.metadata["expert_shards"] == nil)
        // The merged weights are the sharded run's, gathered.
        let values = Dictionary(uniqueKeysWithValues: file.names.filter { !$0.contains("expertBias") }.map { name in
            (name, Tensor(bytes: file[name]!.bytes, shape: file[name]!.shape, dtype: .float32).doubles())
        })
        #expect(Self.largestDifference(values, Self.gathered(run.parameters, expertParallel: 4)) == 0)

        // One rank evaluates the merged model on the same global validation batch as the 4 ranks did.
        let one = try Trainer.prepare(overrides: Self.settings(out: dir.file("one"), batchSize: 8, steps: 4))
        try Checkpoint.loadModel(one.model, from: merged, savedConfig: nil, expectedConfig: nil)
        let loss = one.evaluate()
        #expect(abs(loss - run.valLoss) <= 1e-5 * max(1, abs(loss)), "one rank on the merged checkpoint: \(loss); 4 expert-parallel ranks: \(run.valLoss)")
        // And reads the sharded checkpoint directly (what `fastmoe eval` does), to the same weights.
        let (direct, _, _) = try ModelFactory.load(checkpoint: checkpoint, device: .cpu)
        for (name, p) in direct.namedParameters() { #expect(p.value.doubles() == values[name], "\(name) read from the shards differs from the merged file") }
    }

    /// 4 → 2 and 2 → 4 (4 ranks each): a resume at step 4 under the other layout ends at step 8 where
    /// the uninterrupted run does (float rounding apart: the layouts sum in other orders); under the
    /// same layout it ends there bit for bit.
    @Test(arguments: [(4, 2), (2, 4)])
    func resumeReshardsUnderAnotherLayout(_ layouts: (Int, Int)) throws {
        let (from, to) = layouts
        let dir = TemporaryDirectory()
        let straight = try Self.train(ranks: 4, expertParallel: from, out: dir.file("straight"), steps: 8, checkpointEvery: 4)
        for (name, wep) in [("same", from), ("other", to)] {
            try FileSystem.makeDirectories(dir.file("\(name)/checkpoint-4"))
            for file in try FileSystem.listDirectory(dir.file("straight/checkpoint-4")) {
                writeRaw(try FileSystem.readFile(dir.file("straight/checkpoint-4/\(file)")), to: dir.file("\(name)/checkpoint-4/\(file)"))
            }
            let resumed = try Self.train(ranks: 4, expertParallel: wep, out: dir.file(name), steps: 8, resume: dir.file("\(name)/checkpoint-4"))
            let d = Self.largestDifference(Self.gathered(resumed.parameters, expertParallel: wep), Self.gathered(straight.parameters, expertParallel: from))
            if wep == from {
                #expect(d == 0, "resumed under the same layout (W_ep = \(from)): weights differ by \(d)")
            } else {
                #expect(d <= 5e-5, "resumed at W_ep = \(wep) from W_ep = \(from): weights differ by \(d)")
            }
        }
    }

    @Test func anotherNumberOfExpertsIsRefused() throws {
        let dir = TemporaryDirectory()
        _ = try Self.train(ranks: 2, expertParallel: 2, out: dir.file("ep"), steps: 1)
        let file = try Checkpoint.readModelFile(dir.file("ep/checkpoint-1"))
        var eight = try RunConfig.resolve(overrides: Self.settings(out: dir.file("x"), batchSize: 8, steps: 1, ["experts": .int(8)]))
        eight.expertParallel = nil
        // As an expert-parallel rank holding experts 0..<4 of 8: the checkpoint has 4 in all.
        let model = ModelFactory.build(eight, device: .cpu)
        let sliced = errorMessage {
            try Checkpoint.loadModel(model, from: file, path: "ckpt", savedConfig: nil, expectedConfig: nil,
                                     experts: Checkpoint.ExpertSlice(range: 0..<8, globalExpertCount: 8))
        }
        #expect(sliced?.contains("holds 4 experts") == true && sliced?.contains("use --experts 4") == true, "\(sliced ?? "no error")")
        // As one rank: the shapes differ, and the message names the tensor.
        let whole = errorMessage { try Checkpoint.loadModel(model, from: file, path: "ckpt", savedConfig: nil, expectedConfig: nil) }
        #expect(whole?.contains("holds 4 experts") == true && whole?.contains("this model has 8") == true, "\(whole ?? "no error")")
    }
}
