import Distributed
import Tensors

/// A test group that wraps another and overrides what it needs; everything else forwards.
protocol ForwardingGroup: ProcessGroup {
    var inner: any ProcessGroup { get }
}

extension ForwardingGroup {
    var rank: Int { inner.rank }
    var size: Int { inner.size }
    var name: String { inner.name }
    var device: Device { inner.device }
    func allReduce(_ tensor: Tensor, _ op: ReduceOperation) { inner.allReduce(tensor, op) }
    func allReduceAsync(_ tensor: Tensor, _ op: ReduceOperation) -> any CollectiveWork { inner.allReduceAsync(tensor, op) }
    func broadcast(_ tensor: Tensor, root: Int) { inner.broadcast(tensor, root: root) }
    func allGather(_ tensor: Tensor) -> Tensor { inner.allGather(tensor) }
    func reduceScatter(_ tensor: Tensor, _ op: ReduceOperation) -> Tensor { inner.reduceScatter(tensor, op) }
    func allToAll(_ rows: Tensor, sendCounts: [Int], receiveCounts: [Int]) -> Tensor {
        inner.allToAll(rows, sendCounts: sendCounts, receiveCounts: receiveCounts)
    }
    func barrier() { inner.barrier() }
    func split(color: Int, key: Int) -> any ProcessGroup { inner.split(color: color, key: key) }
}
