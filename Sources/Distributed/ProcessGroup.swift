import Tensors

// Collective communication between the ranks of one job (DESIGN.md, "Distributed"): NCCL between
// GPUs, MPI between CPU processes, threads of one process for tests. Notation: W ranks in a group,
// rank r; tensors are contiguous (DESIGN.md), so a collective moves whole buffers.

/// How a collective combines the ranks' values.
public enum ReduceOperation: String, Sendable, CaseIterable {
    /// Elementwise sum.
    case sum
    /// Elementwise sum divided by the group's size.
    case average
    /// Elementwise maximum.
    case max
}

/// A collective that has been started and may still be running (the data-parallel gradient buckets
/// start their all-reduce during backward and wait for it before the optimizer step).
public protocol CollectiveWork: AnyObject, Sendable {
    /// Orders the work after the collective. On a GPU group the compute stream waits for the
    /// communication stream (an event, no host wait); on CPU groups the host waits.
    func wait()
}

/// The ranks of one communicator and the collectives between them.
///
/// Every rank of the group calls the same collectives in the same order with tensors of the same
/// shape and dtype (like MPI and NCCL); a mismatch stops with a message naming the op and the ranks.
/// Collectives work in place where the result has the input's shape (`allReduce`, `broadcast`).
///
/// ```swift
/// let world = try ProcessGroups.fromEnvironment(device: .cpu)   // torchrun, mpirun, srun or fastmoe launch
/// world.allReduce(gradient, .average)
/// let received = world.allToAll(rows, sendCounts: [3, 0, 5, 1], receiveCounts: counts)
/// ```
public protocol ProcessGroup: AnyObject, Sendable {
    /// This process's rank in the group, `0 ..< size`.
    var rank: Int { get }
    /// `W`: the ranks in the group.
    var size: Int { get }
    /// A name for messages ("world", "expert-parallel 1 of 2", ...).
    var name: String { get }
    /// The device whose tensors this group moves (`.cpu` for MPI and thread groups, `.cuda(i)` for NCCL).
    var device: Device { get }

    /// Combines `tensor` over the ranks, in place: every rank ends with the same result.
    func allReduce(_ tensor: Tensor, _ op: ReduceOperation)
    /// `allReduce` started now and finished by `wait()` (before that `tensor` must not be read or written).
    func allReduceAsync(_ tensor: Tensor, _ op: ReduceOperation) -> any CollectiveWork
    /// Copies `root`'s `tensor` into every rank's `tensor`.
    func broadcast(_ tensor: Tensor, root: Int)
    /// `[n, ...]` from every rank → `[W·n, ...]`, rank 0's rows first.
    func allGather(_ tensor: Tensor) -> Tensor
    /// `[W·n, ...]` on every rank → `[n, ...]`: block `r` combined over the ranks, on rank `r`.
    func reduceScatter(_ tensor: Tensor, _ op: ReduceOperation) -> Tensor
    /// Exchanges the rows of a 2-D tensor: `rows [Σ sendCounts, d]` holds `sendCounts[p]` rows for each
    /// peer `p` in peer order; the result `[Σ receiveCounts, d]` holds `receiveCounts[p]` rows from each
    /// peer in peer order. Zero counts are allowed both ways (a peer that sends or receives nothing).
    /// `receiveCounts[p]` must equal peer `p`'s `sendCounts[rank]`.
    func allToAll(_ rows: Tensor, sendCounts: [Int], receiveCounts: [Int]) -> Tensor
    /// Returns once every rank has called it.
    func barrier()
    /// Splits the group by `color` (`MPI_Comm_split`): ranks with the same color form a new group,
    /// ordered by `key` then by rank here. Every rank calls it; each gets the group of its color.
    /// `color` is ≥ 0, as `MPI_Comm_split` requires.
    func split(color: Int, key: Int) -> any ProcessGroup
}
