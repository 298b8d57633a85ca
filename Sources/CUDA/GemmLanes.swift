/// Side streams, each with its own cuBLAS handle, for independent GEMMs that are each too small to
/// fill the GPU (one expert's GEMM of a fine-grained MoE layer): run side by side, they overlap their
/// tails and launch gaps, where one stream would run them end to end.
///
/// A handle per lane, not one handle rebound per call: cuBLAS's workspace belongs to a handle, and two
/// streams sharing one workspace would race on it. The lanes join the caller's stream before
/// ``run(after:items:allowTF32:_:)`` returns, so everything enqueued later on that stream, frees of
/// the stream-ordered allocator included, comes after the lanes' work.
///
/// ```swift
/// let lanes = try gpu.gemmLanes()
/// lanes.run(after: gpu.stream, items: problems.count, allowTF32: false) { blas, i in
///     blas.rowMajorGemm(m: problems[i].m, n: ..., dtypes: .bfloat16)
/// }
/// ```
public final class GemmLanes: @unchecked Sendable {
    /// How many lanes a device gets: enough to cover the launch gaps of small GEMMs; more would only
    /// split the GPU into slices too small for any one of them.
    public static let count = 4

    let streams: [CUDAStream]
    let handles: [CUBLAS]
    private let fork: CUDAEvent
    private let joins: [CUDAEvent]
    private let lock = Lock()

    init(device: CUDADevice) throws {
        streams = try (0..<Self.count).map { _ in try CUDAStream(device: device) }
        handles = try streams.map { try CUBLAS(device: device, stream: $0) }
        fork = try CUDAEvent(device: device, timing: false)
        joins = try streams.map { _ in try CUDAEvent(device: device, timing: false) }
    }

    /// Enqueues `body(handle, i)` for `i` in `0..<items`, item `i` on lane `i % count`, ordered after the
    /// work already on `stream` and before anything enqueued on it later. Items should come largest
    /// first, so the round robin balances the lanes. Never waits for the GPU.
    public func run(after stream: CUDAStream, items: Int, allowTF32: Bool, _ body: (CUBLAS, Int) -> Void) {
        guard items > 0 else { return }
        // One caller at a time: the events are shared, and two interleaved forks would cross.
        lock.withLock {
            let used = min(items, Self.count)
            fork.record(on: stream)
            for lane in 0..<used {
                streams[lane].wait(for: fork)
                if handles[lane].allowTF32 != allowTF32 { handles[lane].allowTF32 = allowTF32 }
            }
            for i in 0..<items { body(handles[i % Self.count], i) }
            for lane in 0..<used {
                joins[lane].record(on: streams[lane])
                stream.wait(for: joins[lane])
            }
        }
    }
}
