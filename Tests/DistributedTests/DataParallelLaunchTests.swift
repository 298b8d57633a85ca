// `fastmoe launch --backend mpi -- train --device cpu` for real: two MPI ranks train data-parallel
// and match one process training on the same global batch; a resume under the launcher continues
// exactly; a resume with another number of ranks is refused. Needs mpirun and the built binary.
import Foundation
import Testing

@Suite("Data-parallel training under fastmoe launch", .serialized,
       .enabled(if: LauncherProcessTests.fastmoeBinary != nil && mpirunPath != nil, "needs mpirun and the fastmoe binary"))
struct DataParallelLaunchTests {
    /// A tiny model on the CPU: 6 steps, a train record every step, one evaluation at the start and end.
    static func trainArguments(out: String, batchSize: Int, steps: Int = 6, extra: [String] = []) -> [String] {
        ["train", "--device", "cpu", "--layers", "2", "--d-model", "32", "--heads", "2", "--seq-len", "16",
         "--batch-size", "\(batchSize)", "--steps", "\(steps)", "--log-every", "1", "--eval-every", "0", "--eval-batches", "1",
         "--corpus-bytes", "60000", "--out", out] + extra
    }

    @Test func twoMPIRanksMatchOneProcessOnTheGlobalBatchAndResumeExactly() throws {
        let dir = try TemporaryFolder()
        let (oneStatus, oneOutput) = try run(Self.trainArguments(out: dir.path + "/one", batchSize: 8), in: dir)
        #expect(oneStatus == 0, "\(oneOutput)")
        // Small buckets, so several all-reduces start during backward.
        let dp = Self.trainArguments(out: dir.path + "/dp", batchSize: 4, extra: ["--checkpoint-every", "3", "--keep-checkpoints", "0", "--bucket-mb", "0.01"])
        let (dpStatus, dpOutput) = try run(["launch", "--nproc-per-node", "2", "--backend", "mpi", "--"] + dp, in: dir)
        #expect(dpStatus == 0, "\(dpOutput)")
        // Rank 0 alone reports; its header shows the global batch.
        #expect(dpOutput.contains("[rank 0] ") && dpOutput.contains("batch 8×16 (2 ranks × 4)"), "\(dpOutput)")
        #expect(!dpOutput.contains("[rank 1] step"), "rank 1 printed progress:\n\(dpOutput)")

        let one = try Metrics(dir.path + "/one/metrics.jsonl"), two = try Metrics(dir.path + "/dp/metrics.jsonl")
        #expect(one.trainLosses.count == 6 && two.trainLosses.count == 6, "one: \(one.trainLosses), two: \(two.trainLosses)")
        for (step, (a, b)) in zip(two.trainLosses, one.trainLosses).enumerated() {
            #expect(abs(a - b) <= 1e-5 * max(1, abs(b)), "step \(step + 1): 2 ranks \(a), one process \(b)")
        }
        #expect(one.valLosses.count == 2 && two.valLosses.count == 2)
        for (a, b) in zip(two.valLosses, one.valLosses) { #expect(abs(a - b) <= 1e-5 * max(1, abs(b)), "val loss: 2 ranks \(a), one process \(b)") }

        // Resume under the launcher from a copy of step 3's checkpoint: the same weights at step 6, bit for bit.
        let resumed = dir.path + "/resumed"
        try FileManager.default.createDirectory(atPath: resumed, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: dir.path + "/dp/checkpoint-3", toPath: resumed + "/checkpoint-3")
        let (resumeStatus, resumeOutput) = try run(["launch", "--nproc-per-node", "2", "--backend", "mpi", "--", "train",
                                                    "--resume", resumed + "/checkpoint-3"], in: dir)
        #expect(resumeStatus == 0, "\(resumeOutput)")
        let straight = try Data(contentsOf: URL(fileURLWithPath: dir.path + "/dp/checkpoint-6/model.safetensors"))
        let continued = try Data(contentsOf: URL(fileURLWithPath: resumed + "/checkpoint-6/model.safetensors"))
        #expect(straight == continued, "the resumed run's weights at step 6 differ from the uninterrupted run's")

        // One process cannot continue a two-rank run.
        let (aloneStatus, aloneOutput) = try run(["train", "--resume", dir.path + "/dp", "--steps", "8"], in: dir)
        #expect(aloneStatus != 0 && aloneOutput.contains("the run trained on 2 ranks (a global batch of 8 = 2 × 4 windows) but this job has 1"),
                "\(aloneOutput)")
    }

    /// Two MPI ranks, 4 experts spread 2 per rank (the default --expert-parallel under a launcher),
    /// with the balance loss: the same losses as one process on the global batch; the checkpoint
    /// holds one expert shard per rank, and `fastmoe checkpoint merge` writes the one-rank file.
    @Test func twoMPIRanksTrainExpertParallelLikeOneProcess() throws {
        let dir = try TemporaryFolder()
        let moe = ["--experts", "4", "--top-k", "2", "--gate", "topk", "--balance", "aux", "--balance-weight", "0.1"]
        let (oneStatus, oneOutput) = try run(Self.trainArguments(out: dir.path + "/one", batchSize: 8, extra: moe), in: dir)
        #expect(oneStatus == 0, "\(oneOutput)")
        let (epStatus, epOutput) = try run(["launch", "--nproc-per-node", "2", "--backend", "mpi", "--"]
                                               + Self.trainArguments(out: dir.path + "/ep", batchSize: 4, extra: moe), in: dir)
        #expect(epStatus == 0, "\(epOutput)")
        let one = try Metrics(dir.path + "/one/metrics.jsonl"), two = try Metrics(dir.path + "/ep/metrics.jsonl")
        #expect(one.trainLosses.count == 6 && two.trainLosses.count == 6, "one: \(one.trainLosses), two: \(two.trainLosses)")
        for (step, (a, b)) in zip(two.trainLosses, one.trainLosses).enumerated() {
            #expect(abs(a - b) <= 1e-5 * max(1, abs(b)), "step \(step + 1): 2 expert-parallel ranks \(a), one process \(b)")
        }
        for (a, b) in zip(two.valLosses, one.valLosses) { #expect(abs(a - b) <= 1e-5 * max(1, abs(b)), "val loss: 2 ranks \(a), one process \(b)") }
        let checkpoint = dir.path + "/ep/checkpoint-6"
        for r in 0..<2 { #expect(FileManager.default.fileExists(atPath: checkpoint + "/model-expert-rank-\(r).safetensors")) }
        #expect(try header(checkpoint + "/model-expert-rank-1.safetensors")["blocks.0.mlp.experts.fc1.weight"]?.first == 2)

        let (mergeStatus, mergeOutput) = try run(["checkpoint", "merge", checkpoint, "--out", dir.path + "/merged"], in: dir)
        #expect(mergeStatus == 0, "\(mergeOutput)")
        let merged = try header(dir.path + "/merged/model.safetensors"), reference = try header(dir.path + "/one/checkpoint-6/model.safetensors")
        #expect(merged == reference, "the merged checkpoint's tensors differ from one process's: \(merged) vs \(reference)")
    }

    /// The tensor shapes of a safetensors file, read with JSONSerialization (not the code under test).
    func header(_ path: String) throws -> [String: [Int]] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let length = data.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        let json = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + length))) as! [String: Any]
        return json.compactMapValues { ($0 as? [String: Any])?["shape"] as? [Int] }
    }

    /// Runs the fastmoe binary (at most 240 s) with its own TMPDIR: two mpiruns sharing Open MPI's
    /// session directory fail.
    func run(_ arguments: [String], in dir: TemporaryFolder) throws -> (Int32, String) {
        try runChild(LauncherProcessTests.fastmoeBinary!, arguments, temporary: dir.path, timeout: 240)
    }
}

/// A fresh directory, removed when the value goes away.
final class TemporaryFolder {
    let path: String
    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("fastmoe-dp-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// The losses of a metrics.jsonl file, read with JSONSerialization (not the code under test).
struct Metrics {
    var trainLosses: [Double] = []
    var valLosses: [Double] = []

    init(_ path: String) throws {
        for line in try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n") {
            guard let record = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
            if let loss = record["loss"] as? Double { trainLosses.append(loss) }
            if let loss = record["val_loss"] as? Double { valLosses.append(loss) }
        }
    }
}
