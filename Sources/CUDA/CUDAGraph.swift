/// Work recorded once from a device's stream and replayed with one launch (`cuGraphLaunch`): the
/// kernels, copies and library calls of a training step, without the host's cost per launch.
///
/// A replay runs exactly the captured work on exactly the captured addresses, so:
/// - the memory the work allocated comes from a capture pool of the ``CachingAllocator`` that
///   nothing else is handed while the graph lives, and shared blocks freed during the capture are
///   held too (the graph may read them); both go back to the shared pool when the graph is freed;
/// - host bytes the work copied to the device are staged in pinned memory the graph keeps, so a
///   replay copies what the capture saw (tables of addresses, constants);
/// - values that change from one replay to the next must be read by the kernels from device
///   memory that the caller rewrites before each ``launch()``;
/// - a read-back or a wait during the capture cannot be recorded (nothing runs while capturing):
///   the capture fails with ``CUDAError/graphCaptureFailed(reason:)`` naming the first one.
///
/// ```swift
/// let graph = try gpu.captureGraph { enqueueStep() }
/// for _ in 0..<steps { upload(nextInputs); graph.launch() }
/// ```
public final class CUDAGraph: @unchecked Sendable {
    /// The kernels, copies and other nodes the graph replays.
    public let nodeCount: Int
    private let device: CUDADevice
    private let graph: OpaquePointer
    private let executable: OpaquePointer
    /// Keeps the pinned bytes the graph's host-to-device copies read.
    private let capture: StreamCapture
    private let pool: Int

    fileprivate init(device: CUDADevice, graph: OpaquePointer, executable: OpaquePointer, capture: StreamCapture, pool: Int) {
        self.device = device
        self.graph = graph
        self.executable = executable
        self.capture = capture
        self.pool = pool
        var count = 0
        _ = device.driver.graphs!.cuGraphGetNodes(graph, nil, &count)
        nodeCount = count
    }

    deinit {
        let graphs = device.driver.graphs!
        device.makeCurrent()
        // The device may still be replaying: its pool is handed back only once it is done.
        device.synchronize()
        _ = graphs.cuGraphExecDestroy(executable)
        _ = graphs.cuGraphDestroy(graph)
        device.allocator.releaseCapturePool(pool)
    }

    /// Enqueues one replay on the device's stream.
    public func launch() {
        device.makeCurrent()
        device.driver.require(device.driver.graphs!.cuGraphLaunch(executable, device.stream.handle), "cuGraphLaunch")
    }
}

extension CUDADevice {
    /// Records the work `body` enqueues on this device's stream into a graph, without running it.
    /// - Throws: ``CUDAError/graphCaptureFailed(reason:)`` when the work read back from the device or
    ///   waited for it; ``CUDAError/unsupported(feature:reason:)`` on a driver without graphs;
    ///   whatever `body` throws (the capture is discarded).
    public func captureGraph(_ body: () throws -> Void) throws -> CUDAGraph {
        let capture = StreamCapture(device: self)
        // The capture takes segments of its own: the shared pool's wholly free ones go back to the
        // device first, so that the two pools' caches do not add up (a step run eagerly before
        // its capture left a step's worth of free blocks).
        allocator.emptyCache()
        let pool = allocator.beginCapturePool()
        do {
            try stream.beginCapture(capture)
        } catch {
            allocator.endCapturePool()
            allocator.releaseCapturePool(pool)
            throw error
        }
        var failure: Error?
        do { try body() } catch { failure = error }
        let graph: OpaquePointer?
        do { graph = try stream.endCapture() } catch { failure = failure ?? error; graph = nil }
        allocator.endCapturePool()
        func discard() {
            if let graph { _ = driver.graphs!.cuGraphDestroy(graph) }
            allocator.releaseCapturePool(pool)
        }
        if let refusal = capture.refusal { failure = failure ?? CUDAError.graphCaptureFailed(reason: refusal) }
        if failure == nil && graph == nil { failure = CUDAError.graphCaptureFailed(reason: "the driver recorded no graph") }
        if let failure {
            discard()
            throw failure
        }
        var executable: OpaquePointer? = nil
        makeCurrent()
        let result = driver.graphs!.cuGraphInstantiateWithFlags(&executable, graph, 0)
        guard result == DriverConstant.success, let executable else {
            discard()
            throw driver.error(result, "cuGraphInstantiateWithFlags")
        }
        return CUDAGraph(device: self, graph: graph!, executable: executable, capture: capture, pool: pool)
    }
}
