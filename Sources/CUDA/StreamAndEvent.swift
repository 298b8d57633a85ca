/// A CUDA stream: an ordered queue of GPU work on one device.
///
/// Copies and memsets are asynchronous; nothing waits for the GPU unless the caller asks
/// (``synchronize()``, ``download(_:count:as:)``). Per-op calls stop the program on a CUDA error
/// (see ``Driver/require(_:_:)``).
public final class CUDAStream: @unchecked Sendable {
    /// The `CUstream` handle (also a valid `cudaStream_t` for cuBLAS and NCCL).
    public let handle: OpaquePointer
    /// The index of the device whose context the stream belongs to.
    public let deviceIndex: Int
    let driver: Driver
    let context: OpaquePointer
    /// The graph capture under way on this stream (``CUDAGraph``), if any.
    private let captureLock = Lock()
    private var activeCapture: StreamCapture?

    /// Creates a new non-blocking stream on `device`.
    public convenience init(device: CUDADevice) throws {
        try self.init(driver: device.driver, context: device.context, deviceIndex: device.index)
    }

    init(driver: Driver, context: OpaquePointer, deviceIndex: Int) throws {
        self.driver = driver
        self.context = context
        self.deviceIndex = deviceIndex
        try driver.check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent(device \(deviceIndex))")
        var stream: OpaquePointer? = nil
        try driver.check(driver.cuStreamCreate(&stream, DriverConstant.streamNonBlocking), "cuStreamCreate")
        guard let stream else { throw CUDAError.invalidArgument("cuStreamCreate returned no stream") }
        handle = stream
    }

    deinit {
        _ = driver.cuStreamDestroy(handle)
    }

    /// Makes the stream's context current on the calling thread (the driver enqueues in the current context).
    @inline(__always)
    func makeContextCurrent() {
        driver.require(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent(device \(deviceIndex))")
    }

    /// Blocks the calling thread until all work enqueued so far has finished. While the stream is
    /// captured into a graph nothing runs, so nothing is waited for: the capture is marked failed.
    public func synchronize() {
        if refusedDuringCapture("a wait for the device") { return }
        makeContextCurrent()
        DeviceCounters.hostWaits.add()
        driver.require(driver.cuStreamSynchronize(handle), "cuStreamSynchronize(device \(deviceIndex))")
    }

    /// Makes later work on this stream wait for `event` (recorded on any stream) without blocking the host.
    public func wait(for event: CUDAEvent) {
        makeContextCurrent()
        driver.require(driver.cuStreamWaitEvent(handle, event.handle, 0), "cuStreamWaitEvent")
    }

    /// Enqueues a host-to-device copy. From pageable memory the driver stages the source before returning,
    /// so `source` may be reused at once; from pinned memory (``PinnedHostBuffer``) it must stay unchanged
    /// until the stream reaches the copy.
    ///
    /// While the stream is captured into a graph, the bytes are first copied into pinned memory that
    /// the graph keeps, so that every replay copies what was there at capture.
    public func copyHostToDevice(_ source: UnsafeRawPointer, to destination: CUdeviceptr, byteCount: Int) {
        guarantee(byteCount >= 0, "copyHostToDevice: negative byteCount \(byteCount)")
        guard byteCount > 0 else { return }
        let staged = captureLock.withLock { activeCapture.map { $0.stage(source, byteCount: byteCount) } }
        if case .some(nil) = staged { return }  // not staged: the capture has failed already
        makeContextCurrent()
        driver.require(driver.cuMemcpyHtoDAsync(destination, staged.flatMap { $0 } ?? source, byteCount, handle),
                       "cuMemcpyHtoDAsync_v2(\(byteCount) bytes)")
    }

    /// Enqueues a device-to-host copy. Into pageable memory the driver returns only when the copy is done;
    /// into pinned memory it returns at once, and the data is there after ``synchronize()``.
    /// While the stream is captured into a graph the copy cannot happen (nothing runs): the
    /// destination is zeroed and the capture marked failed.
    public func copyDeviceToHost(_ source: CUdeviceptr, to destination: UnsafeMutableRawPointer, byteCount: Int) {
        guarantee(byteCount >= 0, "copyDeviceToHost: negative byteCount \(byteCount)")
        guard byteCount > 0 else { return }
        if refusedDuringCapture("a read-back of \(byteCount) bytes from the device") {
            destination.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
            return
        }
        makeContextCurrent()
        driver.require(driver.cuMemcpyDtoHAsync(destination, source, byteCount, handle),
                       "cuMemcpyDtoHAsync_v2(\(byteCount) bytes)")
    }

    /// Enqueues a device-to-device copy.
    public func copyDeviceToDevice(_ source: CUdeviceptr, to destination: CUdeviceptr, byteCount: Int) {
        guarantee(byteCount >= 0, "copyDeviceToDevice: negative byteCount \(byteCount)")
        guard byteCount > 0 else { return }
        makeContextCurrent()
        driver.require(driver.cuMemcpyDtoDAsync(destination, source, byteCount, handle),
                       "cuMemcpyDtoDAsync_v2(\(byteCount) bytes)")
    }

    /// Enqueues setting `count` bytes at `destination` to `value`.
    public func memsetD8(_ destination: CUdeviceptr, value: UInt8, count: Int) {
        guarantee(count >= 0, "memsetD8: negative count \(count)")
        guard count > 0 else { return }
        makeContextCurrent()
        driver.require(driver.cuMemsetD8Async(destination, value, count, handle), "cuMemsetD8Async(\(count) bytes)")
    }

    /// Enqueues setting `count` 32-bit words at `destination` (4-byte aligned) to `value`;
    /// `0x7FC0_0000` writes float32 NaNs, `0` writes zeros of any 32-bit type.
    public func memsetD32(_ destination: CUdeviceptr, value: UInt32, count: Int) {
        guarantee(count >= 0, "memsetD32: negative count \(count)")
        guarantee(destination % 4 == 0, "memsetD32: address \(destination) is not 4-byte aligned")
        guard count > 0 else { return }
        makeContextCurrent()
        driver.require(driver.cuMemsetD32Async(destination, value, count, handle), "cuMemsetD32Async(\(count) words)")
    }

    /// Copies an array to the device (enqueued; `values` may be changed once this returns).
    public func upload<Element: BitwiseCopyable>(_ values: [Element], to destination: CUdeviceptr) {
        values.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            copyHostToDevice(base, to: destination, byteCount: raw.count)
        }
    }

    /// Waits for the stream, then returns `count` elements read from `source`. A sync point.
    public func download<Element: BitwiseCopyable>(
        _ source: CUdeviceptr, count: Int, as type: Element.Type = Element.self
    ) -> [Element] {
        guarantee(count >= 0, "download: negative count \(count)")
        let result = [Element](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 {
                copyDeviceToHost(source, to: UnsafeMutableRawPointer(buffer.baseAddress!),
                                 byteCount: count * MemoryLayout<Element>.stride)
            }
            initialized = count
        }
        synchronize()
        return result
    }
}

extension CUDAStream {
    /// Whether work is being captured into a graph on this stream.
    public var isCapturing: Bool { captureLock.withLock { activeCapture != nil } }

    /// Starts recording into `capture` (``CUDAGraph``).
    func beginCapture(_ capture: StreamCapture) throws {
        guard let graphs = driver.graphs else {
            throw CUDAError.unsupported(feature: "CUDA graphs", reason: "driver \(driver.versionString) has no cuGraphInstantiateWithFlags (CUDA 11.4 or newer)")
        }
        try captureLock.withLock {
            guard activeCapture == nil else { throw CUDAError.graphCaptureFailed(reason: "the stream is being captured already") }
            makeContextCurrent()
            // Relaxed: the allocator may call cuMemAlloc while the step is captured.
            try driver.check(graphs.cuStreamBeginCapture(handle, 2), "cuStreamBeginCapture_v2")
            activeCapture = capture
        }
    }

    /// Ends the capture: the recorded graph, or nil if the driver recorded none.
    func endCapture() throws -> OpaquePointer? {
        try captureLock.withLock {
            activeCapture = nil
            var graph: OpaquePointer? = nil
            makeContextCurrent()
            try driver.check(driver.graphs!.cuStreamEndCapture(handle, &graph), "cuStreamEndCapture")
            return graph
        }
    }

    /// Fails the capture under way, if any, with `reason` (the first reason given is kept): for
    /// work that finds mid-capture that a replay could not repeat it.
    public func failCapture(_ reason: String) {
        _ = refusedDuringCapture(reason)
    }

    /// During a capture: records `what` as the reason the capture failed and returns true.
    func refusedDuringCapture(_ what: @autoclosure () -> String) -> Bool {
        captureLock.withLock {
            guard let capture = activeCapture else { return false }
            capture.refuse(what())
            return true
        }
    }
}

/// What a stream's capture collects besides the driver's graph: host bytes that its copies read
/// (kept pinned for the graph's life) and the first thing it could not record.
final class StreamCapture: @unchecked Sendable {
    private let device: CUDADevice
    private(set) var staging: [PinnedHostBuffer] = []
    private var used = 0
    private(set) var refusal: String?

    init(device: CUDADevice) { self.device = device }

    func refuse(_ what: String) { if refusal == nil { refusal = what } }

    /// A pinned copy of `byteCount` bytes at `source`, 16-byte aligned, in chunks of 64 KiB or more.
    func stage(_ source: UnsafeRawPointer, byteCount: Int) -> UnsafeRawPointer? {
        var at = (used + 15) & ~15
        if staging.isEmpty || at + byteCount > staging.last!.byteCount {
            guard let buffer = try? PinnedHostBuffer(device: device, byteCount: max(byteCount, 64 << 10)) else {
                refuse("pinned host memory for a copy of \(byteCount) bytes")
                return nil
            }
            staging.append(buffer)
            at = 0
        }
        let target = staging.last!.baseAddress + at
        target.copyMemory(from: source, byteCount: byteCount)
        used = at + byteCount
        return UnsafeRawPointer(target)
    }
}

/// A CUDA event: a marker in a stream, for ordering streams and timing GPU work.
///
/// ```swift
/// let start = try CUDAEvent(device: gpu), stop = try CUDAEvent(device: gpu)
/// start.record(on: gpu.stream); /* enqueue work */ stop.record(on: gpu.stream)
/// let ms = stop.elapsedMilliseconds(since: start)   // waits for `stop`
/// ```
public final class CUDAEvent: @unchecked Sendable {
    /// The `CUevent` handle.
    public let handle: OpaquePointer
    /// Whether the event records time (events used only for ordering are cheaper without).
    public let timing: Bool
    let driver: Driver
    let context: OpaquePointer

    public init(device: CUDADevice, timing: Bool = true) throws {
        driver = device.driver
        context = device.context
        self.timing = timing
        device.makeCurrent()
        var event: OpaquePointer? = nil
        let flags = timing ? DriverConstant.eventDefault : DriverConstant.eventDisableTiming
        try driver.check(driver.cuEventCreate(&event, flags), "cuEventCreate")
        guard let event else { throw CUDAError.invalidArgument("cuEventCreate returned no event") }
        handle = event
    }

    deinit {
        _ = driver.cuEventDestroy(handle)
    }

    /// Enqueues the event on `stream`: it completes when the work enqueued before it has.
    public func record(on stream: CUDAStream) {
        stream.makeContextCurrent()
        driver.require(driver.cuEventRecord(handle, stream.handle), "cuEventRecord")
    }

    /// Whether the work before the event has completed, without blocking (`cuEventQuery`): a watchdog
    /// polls this. An event never recorded counts as completed. A CUDA error other than "not ready"
    /// (a kernel fault, which poisons the context) is returned as `.failure` for the caller to report.
    ///
    /// ```swift
    /// end.record(on: stream)
    /// while case .success(false) = end.query() { /* still running */ }
    /// ```
    public func query() -> Result<Bool, CUDAError> {
        _ = driver.cuCtxSetCurrent(context)
        let result = driver.cuEventQuery(handle)
        if result == DriverConstant.success { return .success(true) }
        if result == DriverConstant.errorNotReady { return .success(false) }
        return .failure(driver.error(result, "cuEventQuery"))
    }

    /// Blocks until the event has completed.
    public func synchronize() {
        DeviceCounters.hostWaits.add()
        driver.require(driver.cuEventSynchronize(handle), "cuEventSynchronize")
    }

    /// Milliseconds of GPU time from `start` to this event (both recorded with timing on).
    /// Waits for this event first.
    public func elapsedMilliseconds(since start: CUDAEvent) -> Float {
        guarantee(timing && start.timing, "elapsedMilliseconds: both events must be created with timing: true")
        synchronize()
        var milliseconds: Float = 0
        driver.require(driver.cuEventElapsedTime(&milliseconds, start.handle, handle), "cuEventElapsedTime")
        return milliseconds
    }
}

/// Page-locked host memory (`cuMemAllocHost`): the fast path for small device-to-host read-backs such as
/// the per-expert token counts the MoE layer needs on the host, and for overlapping copies with compute.
public final class PinnedHostBuffer: @unchecked Sendable {
    /// Start of the buffer (host-addressable; also usable as the host side of async copies).
    public let baseAddress: UnsafeMutableRawPointer
    public let byteCount: Int
    let driver: Driver
    let context: OpaquePointer

    /// Allocates `byteCount` bytes of pinned memory in `device`'s context.
    public init(device: CUDADevice, byteCount: Int) throws {
        guarantee(byteCount > 0, "PinnedHostBuffer: byteCount must be positive, got \(byteCount)")
        driver = device.driver
        context = device.context
        self.byteCount = byteCount
        device.makeCurrent()
        var pointer: UnsafeMutableRawPointer? = nil
        try driver.check(driver.cuMemAllocHost(&pointer, byteCount), "cuMemAllocHost_v2(\(byteCount) bytes)")
        guard let pointer else { throw CUDAError.invalidArgument("cuMemAllocHost_v2 returned no memory") }
        baseAddress = pointer
    }

    deinit {
        _ = driver.cuCtxSetCurrent(context)
        _ = driver.cuMemFreeHost(baseAddress)
    }

    /// The buffer's contents viewed as `count` values of `Element`.
    public func withUnsafeMutableBufferPointer<Element, Result>(
        as type: Element.Type, count: Int, _ body: (UnsafeMutableBufferPointer<Element>) throws -> Result
    ) rethrows -> Result {
        guarantee(count >= 0 && count * MemoryLayout<Element>.stride <= byteCount,
                     "PinnedHostBuffer: \(count) x \(Element.self) does not fit in \(byteCount) bytes")
        let typed = baseAddress.bindMemory(to: Element.self, capacity: count)
        return try body(UnsafeMutableBufferPointer(start: typed, count: count))
    }
}
