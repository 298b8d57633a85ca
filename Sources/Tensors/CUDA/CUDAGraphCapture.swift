import CUDA
import Synchronization

/// A captured `CUDAGraph` with the random draws its work made.
final class CapturedCUDAWork: ReplayableWork {
    let graph: CUDAGraph
    let randomDraws: [RandomStream]
    var nodeCount: Int { graph.nodeCount }

    init(graph: CUDAGraph, randomDraws: [RandomStream]) {
        (self.graph, self.randomDraws) = (graph, randomDraws)
    }

    func replay() { graph.launch() }
}

/// The random draws of a capture under way: slot `i` of `table` (int32) advances draw `i`.
/// Touched only under `CUDABackend.captureDraws`' lock.
final class CaptureDraws {
    let table: CUdeviceptr
    let capacity: Int
    private(set) var streams: [RandomStream] = []

    init(table: CUdeviceptr, capacity: Int) { (self.table, self.capacity) = (table, capacity) }

    /// The slot of the next draw, `stream`; nil when every slot is taken.
    func take(_ stream: RandomStream) -> CUdeviceptr? {
        guard streams.count < capacity else { return nil }
        streams.append(stream)
        return table + CUdeviceptr(4 * (streams.count - 1))
    }
}

extension CUDABackend: GraphCapturing {
    /// Records `body`'s work on this device's stream (see `CUDAGraph`). While it runs, random
    /// draws take the slots of `randomAdvance` in turn, and grouped products with device-side
    /// sizes take our grouped kernel under `.automatic` (one GEMM per expert would read the sizes back).
    public func captureGraph(randomAdvance: Tensor?, _ body: () throws -> Void) throws -> ReplayableWork {
        if let randomAdvance {
            guarantee(randomAdvance.device == device && randomAdvance.dtype == .int32,
                      "captureGraph: the random advances must be int32 on \(device)")
        }
        captureDraws.withLock { $0 = CaptureDraws(table: randomAdvance?.pointer ?? 0, capacity: randomAdvance?.count ?? 0) }
        defer { captureDraws.withLock { $0 = nil } }
        let graph = try gpu.captureGraph(body)
        return CapturedCUDAWork(graph: graph, randomDraws: captureDraws.withLock { $0?.streams ?? [] })
    }

    /// The advance slot of a random draw made now: 0 outside a capture; during one, the next slot
    /// (the capture fails when there is none).
    func randomAdvanceSlot(_ stream: RandomStream) -> CUdeviceptr {
        let slot = captureDraws.withLock { draws -> CUdeviceptr? in
            guard let draws else { return 0 }
            return draws.take(stream)
        }
        guard let slot else {
            gpu.stream.failCapture("more random draws than the \(captureDraws.withLock { $0?.capacity ?? 0 }) slots for their advances")
            return 0
        }
        return slot
    }
}
