import Distributed
import MoE
import NN
import Tensors

/// A trainer's share of a data-parallel job over the world group (W ranks, this one `rank`), and the
/// collectives the training loop needs besides the gradient sync.
///
/// Every rank draws the global batch of `W·b` windows exactly as a one-rank run with batch `W·b`
/// would, and keeps rows `rank·b ..< (rank+1)·b`; validation batches are split the same way. The
/// loss, the validation loss and the expert load are combined over the ranks, so the numbers rank 0
/// reports are those of the global batch. With W = 1 every method is the identity and nothing is
/// communicated.
struct DataParallel {
    let world: any ProcessGroup
    /// Windows per rank (`--batch-size`).
    let batchSize: Int
    let seqLen: Int

    var size: Int { world.size }
    var rank: Int { world.rank }
    var isDistributed: Bool { world.size > 1 }
    /// Rank 0 alone prints, writes metrics and checkpoints.
    var writes: Bool { world.rank == 0 }
    /// `W·b`: the windows of one step over all ranks.
    var globalBatchSize: Int { world.size * batchSize }

    /// This rank's rows of a global batch of `W·b` windows.
    func slice(_ batch: (inputs: [Int32], targets: [Int32])) -> (inputs: [Int32], targets: [Int32]) {
        guard isDistributed else { return batch }
        let rows = (rank * batchSize * seqLen)..<((rank + 1) * batchSize * seqLen)
        return (Array(batch.inputs[rows]), Array(batch.targets[rows]))
    }

    /// The mean over the ranks of a scalar loss tensor (each rank's mean over its equal share of
    /// tokens, so the mean of the means is the global batch's). One host read, as `item()`.
    func mean(of loss: Tensor) -> Double {
        guard isDistributed else { return loss.item() }
        let copy = loss.detached().contiguousCopy().reshaped([1])
        world.allReduce(copy, .average)
        return copy.item()
    }

    /// The mean over the ranks of a host value (in float32: every group reduces it, and the values
    /// are float32 losses to begin with).
    func mean(_ value: Double) -> Double {
        guard isDistributed else { return value }
        let t = Tensor([value], shape: [1], dtype: .float32, device: world.device)
        world.allReduce(t, .average)
        return t.item()
    }

    /// True on every rank when any rank asks to stop, so all ranks end after the same step (a rank
    /// leaving alone would leave the others waiting in a collective).
    func anyRank(_ flag: Bool) -> Bool {
        guard isDistributed else { return flag }
        let t = Tensor([Int32(flag ? 1 : 0)], shape: [1], device: world.device)
        world.allReduce(t, .max)
        return t.int32s()[0] != 0
    }

    /// The expert load summed over the ranks: the counts of the global batch.
    func sum(_ loads: [(name: String, load: LoadStatistics)]) -> [(name: String, load: LoadStatistics)] {
        guard isDistributed, !loads.isEmpty else { return loads }
        var values: [Int32] = []
        for (_, load) in loads {
            values += load.routedCounts.map { Int32($0) } + load.keptCounts.map { Int32($0) } + [Int32(load.tokenCount)]
        }
        let t = Tensor(values, shape: [values.count], device: world.device)
        world.allReduce(t, .sum)
        let summed = t.int32s().map(Int.init)
        var at = 0
        return loads.map { name, load in
            let n = load.routedCounts.count
            defer { at += 2 * n + 1 }
            return (name, LoadStatistics(routedCounts: Array(summed[at..<(at + n)]), keptCounts: Array(summed[(at + n)..<(at + 2 * n)]),
                                         tokenCount: summed[at + 2 * n], topK: load.topK))
        }
    }
}

extension DataParallel {
    /// The world group `make` builds for the run's `device`, and the device this rank trains on: the
    /// group's (`cuda:LOCAL_RANK` under a launcher). Without `make`, a group of one on `device`.
    static func join(_ make: ((Device) throws -> any ProcessGroup)?, device: Device) throws -> (any ProcessGroup, Device) {
        guard let make else { return (SingleProcessGroup(device: device), device) }
        let world = try make(device)
        guard world.device.isCUDA == device.isCUDA else {
            throw RunConfigError("--device \(device): the world group '\(world.name)' moves tensors on \(world.device); "
                + "give every rank the same --device (GPU ranks talk over NCCL, CPU ranks over MPI)")
        }
        return (world, world.device)
    }

    /// A checkpoint continues only with the ranks it was written with: the global batch is
    /// `W · --batch-size`, and the batch size cannot change when resuming.
    static func checkResume(_ saved: TrainingState, path: String, world: any ProcessGroup) throws {
        guard saved.worldSize != world.size else { return }
        let b = saved.config.batchSize
        throw CheckpointError("--resume \(path): the run trained on \(saved.worldSize) rank\(saved.worldSize == 1 ? "" : "s") "
            + "(a global batch of \(saved.worldSize * b) = \(saved.worldSize) × \(b) windows) but this job has \(world.size); "
            + "another number of ranks would change the global batch and the data order, so the run would not continue exactly — "
            + "resume with \(saved.worldSize) rank\(saved.worldSize == 1 ? "" : "s")"
            + (saved.worldSize == 1 ? " (a plain `fastmoe train --resume`)" : " (e.g. `fastmoe launch --nproc-per-node \(saved.worldSize) -- train --resume ...`)"))
    }

    /// For W > 1: checks that every rank built the same model, copies rank 0's values to all (rank 0
    /// of each replica group, for sharded experts), and returns the gradient sync: every parameter
    /// averaged over the world when experts are replicated; with an expert layout, experts over
    /// their replicas and scaled by `ExpertLayout.placement` (MOE_SEMANTICS §3). nil for W = 1.
    func gradientSync(for model: GPT, bucketBytes: Int, experts layout: ExpertLayout?, expertGradient: String) throws -> GradientSync? {
        guard isDistributed else { return nil }
        let parameters = model.namedParameters()
        try ModelAgreement.check(parameters, over: world)
        let sync = try GradientSync(parameters: parameters, bucketBytes: bucketBytes,
                                    placement: layout?.placement(world: world, expertGradient: expertGradient)
                                        ?? ParameterPlacement.replicated(over: world))
        sync.broadcastParameters()
        return sync
    }
}
