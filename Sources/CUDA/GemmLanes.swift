/// Side streams, each with its own cuBLAS handle, for independent GEMMs that are each too small to
/// fill the GPU (one expert's GEMM of a fine-grained MoE layer): run side by side, they overlap their
/// tails and launch gaps, where one stream would run them end to end.
///
/// A cuBLAS and a cuBLASLt handle per lane, not one handle rebound per call: a workspace belongs to a
/// handle, and two streams sharing one workspace would race on it. The lanes join the caller's stream before
/// ``run(after:items:allowTF32:_:)`` returns, so everything enqueued later on that stream, frees of
/// the stream-ordered allocator included, comes after the lanes' work.
///
/// ```swift
/// let lanes = try gpu.gemmLanes()
/// lanes.run(after: gpu.stream, items: problems.count, allowTF32: false) { lane, i in
///     lane.blas.rowMajorGemm(m: problems[i].m, n: ..., dtypes: .bfloat16)
/// }
/// ```
public final class GemmLanes: @unchecked Sendable {
    /// How many lanes a device gets: enough to cover the launch gaps of small GEMMs; more would only
    /// split the GPU into slices too small for any one of them.
    public static let count = 4

    /// One lane: its stream and the handles bound to it.
    public struct Lane {
        public let stream: CUDAStream
        public let blas: CUBLAS
        public let blasLt: CUBLASLt
    }

    let lanes: [Lane]
    private let fork: CUDAEvent
    private let joins: [CUDAEvent]
    private let lock = Lock()

    init(device: CUDADevice) throws {
        lanes = try (0..<Self.count).map { _ in
            let stream = try CUDAStream(device: device)
            let blas = try CUBLAS(device: device, stream: stream)
            return Lane(stream: stream, blas: blas, blasLt: try CUBLASLt(blas: blas))
        }
        fork = try CUDAEvent(device: device, timing: false)
        joins = try lanes.map { _ in try CUDAEvent(device: device, timing: false) }
    }

    /// Enqueues `body(lane, i)` for `i` in `0..<items`, item `i` on lane `i % count`, ordered after the
    /// work already on `stream` and before anything enqueued on it later. Items should come largest
    /// first, so the round robin balances the lanes. Never waits for the GPU.
    public func run(after stream: CUDAStream, items: Int, allowTF32: Bool, _ body: (Lane, Int) -> Void) {
        guard items > 0 else { return }
        // One caller at a time: the events are shared, and two interleaved forks would cross.
        lock.withLock {
            let used = min(items, Self.count)
            fork.record(on: stream)
            for lane in lanes[0..<used] {
                lane.stream.wait(for: fork)
                if lane.blas.allowTF32 != allowTF32 { lane.blas.allowTF32 = allowTF32 }
            }
            for i in 0..<items { body(lanes[i % Self.count], i) }
            for (lane, join) in zip(lanes[0..<used], joins) {
                join.record(on: lane.stream)
                stream.wait(for: join)
            }
        }
    }
}
