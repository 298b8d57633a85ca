import CUDA
import Synchronization
import Tensors

/// An NCCL collective in flight (``NCCLProcessGroup/allReduceAsync(_:_:)``).
///
/// It holds the tensors the collective reads and writes: the caching allocator hands a freed block to
/// the next allocation at once, in compute-stream order, so until the compute stream is ordered after
/// the collective (``wait()``) the communication stream may still be using them. Dropping the work
/// without waiting waits (a no-op on the host: it only enqueues the stream wait).
final class NCCLWork: CollectiveWork, @unchecked Sendable {
    private struct Pending {
        let end: CUDAEvent
        let compute: CUDAStream
        let keepAlive: [Tensor]
    }

    private let pending: Mutex<Pending?>

    /// `end` completes with the collective; `compute` is the stream that must not run ahead of it.
    init(end: CUDAEvent?, compute: CUDAStream, keepAlive: [Tensor]) {
        pending = Mutex(end.map { Pending(end: $0, compute: compute, keepAlive: keepAlive) })
    }

    /// Makes the compute stream wait for the collective (no host wait), then lets the tensors go.
    func wait() {
        let taken = pending.withLock { state -> Pending? in
            defer { state = nil }
            return state
        }
        guard let taken else { return }
        taken.compute.wait(for: taken.end)
        withExtendedLifetime(taken.keepAlive) {}
    }

    deinit { wait() }
}
