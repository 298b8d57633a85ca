import Tensors

/// The group of a job of one rank, on any device: every collective is an identity or a copy, so
/// code written for W ranks runs unchanged in a plain `fastmoe train`.
///
/// ```swift
/// let world = SingleProcessGroup(device: .cuda(0))
/// world.allReduce(gradient, .average)      // leaves gradient as it is
/// ```
public final class SingleProcessGroup: ProcessGroup, @unchecked Sendable {
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public let name: String
    public let device: Device

    public init(device: Device, name: String = "world") {
        self.device = device
        self.name = name
    }

    public func allReduce(_ tensor: Tensor, _ op: ReduceOperation) { check(tensor, "allReduce") }

    public func allReduceAsync(_ tensor: Tensor, _ op: ReduceOperation) -> any CollectiveWork {
        check(tensor, "allReduceAsync")
        return CompletedWork()
    }

    public func broadcast(_ tensor: Tensor, root: Int) {
        check(tensor, "broadcast")
        guarantee(root == 0, "broadcast on group '\(name)': root \(root) is not a rank of a group of size 1")
    }

    public func allGather(_ tensor: Tensor) -> Tensor {
        check(tensor, "allGather")
        guarantee(tensor.rank >= 1, "allGather on group '\(name)': a scalar; gather tensors of rank ≥ 1")
        return copy(tensor)
    }

    public func reduceScatter(_ tensor: Tensor, _ op: ReduceOperation) -> Tensor {
        check(tensor, "reduceScatter")
        guarantee(tensor.rank >= 1, "reduceScatter on group '\(name)': a scalar; scatter tensors of rank ≥ 1")
        return copy(tensor)
    }

    public func allToAll(_ rows: Tensor, sendCounts: [Int], receiveCounts: [Int]) -> Tensor {
        check(rows, "allToAll")
        AllToAllCounts.check(rows: rows, sendCounts: sendCounts, receiveCounts: receiveCounts, rank: 0, size: 1, group: name)
        guarantee(receiveCounts == sendCounts, "allToAll on group '\(name)': rank 0 expects \(receiveCounts[0]) rows from rank 0, which sends it \(sendCounts[0])")
        return copy(rows)
    }

    public func barrier() {}

    public func split(color: Int, key: Int) -> any ProcessGroup {
        guarantee(color >= 0, "split on group '\(name)': color \(color); colors must be ≥ 0 (as in MPI_Comm_split)")
        return SingleProcessGroup(device: device, name: "\(name)/color \(color)")
    }

    private func check(_ tensor: Tensor, _ op: String) {
        guarantee(tensor.device == device, "\(op) on group '\(name)': the tensor is on \(tensor.device) but the group moves tensors on \(device)")
    }

    /// A new tensor with the same values (the other groups return new tensors too).
    private func copy(_ tensor: Tensor) -> Tensor {
        let out = Tensor.empty(tensor.shape, dtype: tensor.dtype, device: tensor.device)
        tensor.backend.copy(tensor, to: out)
        return out
    }
}
