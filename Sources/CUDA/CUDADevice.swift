/// A GPU's compute capability, e.g. 9.0 for Hopper (H100).
public struct ComputeCapability: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let major: Int
    public let minor: Int

    public init(major: Int, minor: Int) {
        self.major = major
        self.minor = minor
    }

    /// 10 * major + minor: 90 for sm_90.
    public var number: Int { major * 10 + minor }

    /// The NVRTC real-architecture name: "sm_90".
    public var smName: String { "sm_\(number)" }

    public var description: String { "\(major).\(minor)" }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.number < rhs.number }
}

/// One GPU, with its primary context, its default stream and its caching allocator.
///
/// Devices are created once per process (``CUDA/device(_:)``) and live until it exits; the
/// resources they hand out (stream, allocator, cuBLAS and cuBLASLt handles, kernel compiler) are created once too.
/// Every call into the device makes its primary context current on the calling thread first, so any
/// thread may use any device.
///
/// ```swift
/// let gpu = try CUDA.device(0)
/// let buffer = try gpu.allocator.allocate(byteCount: 4096)
/// gpu.stream.memsetD32(buffer.address, value: 0, count: 1024)
/// gpu.stream.synchronize()
/// gpu.allocator.free(buffer.address)
/// ```
public final class CUDADevice: @unchecked Sendable {
    /// The ordinal the driver uses (after `CUDA_VISIBLE_DEVICES`).
    public let index: Int
    /// Marketing name, e.g. "NVIDIA H100 80GB HBM3".
    public let name: String
    public let computeCapability: ComputeCapability
    /// Number of streaming multiprocessors (132 on an H100 SXM).
    public let multiprocessorCount: Int
    /// Device memory in bytes.
    public let totalMemory: Int
    /// The most dynamic shared memory one block may opt in to (227 KiB on Hopper); see
    /// ``CUDAFunction/setMaxDynamicSharedMemory(_:)``.
    public let maxSharedMemoryPerBlockOptin: Int
    /// The driver this device was opened with.
    public let driver: Driver
    /// The device's primary context (shared with the CUDA runtime that cuBLAS and NCCL use).
    public let context: OpaquePointer
    /// The stream every op of this device is enqueued on unless the caller picks another.
    /// It is non-blocking: it does not synchronize with the legacy NULL stream.
    public let stream: CUDAStream
    /// The caching allocator for this device's memory (stream-ordered for ``stream``).
    public private(set) var allocator: CachingAllocator!

    private let lock = Lock()
    private var blasHandle: CUBLAS?
    private var lanes: GemmLanes?
    private var kernelCompiler: KernelCompiler?
    private var blasLtHandle: CUBLASLt?

    init(index: Int, driver: Driver) throws {
        self.index = index
        self.driver = driver
        var device: Int32 = 0
        try driver.check(driver.cuDeviceGet(&device, Int32(index)), "cuDeviceGet(\(index))")

        var nameBuffer = [CChar](repeating: 0, count: 256)
        try driver.check(driver.cuDeviceGetName(&nameBuffer, 255, device), "cuDeviceGetName(\(index))")
        name = nameBuffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }

        func attribute(_ id: Int32, _ label: String) throws -> Int {
            var value: Int32 = 0
            try driver.check(driver.cuDeviceGetAttribute(&value, id, device), "cuDeviceGetAttribute(\(label), device \(index))")
            return Int(value)
        }
        computeCapability = ComputeCapability(
            major: try attribute(DriverConstant.attributeComputeCapabilityMajor, "COMPUTE_CAPABILITY_MAJOR"),
            minor: try attribute(DriverConstant.attributeComputeCapabilityMinor, "COMPUTE_CAPABILITY_MINOR"))
        multiprocessorCount = try attribute(DriverConstant.attributeMultiprocessorCount, "MULTIPROCESSOR_COUNT")
        maxSharedMemoryPerBlockOptin = try attribute(
            DriverConstant.attributeMaxSharedMemoryPerBlockOptin, "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN")

        var bytes = 0
        try driver.check(driver.cuDeviceTotalMem(&bytes, device), "cuDeviceTotalMem_v2(\(index))")
        totalMemory = bytes

        var primary: OpaquePointer? = nil
        try driver.check(driver.cuDevicePrimaryCtxRetain(&primary, device), "cuDevicePrimaryCtxRetain(\(index))")
        guard let primary else {
            throw CUDAError.noDevice(reason: "cuDevicePrimaryCtxRetain returned no context for device \(index)")
        }
        context = primary

        stream = try CUDAStream(driver: driver, context: primary, deviceIndex: index)
        allocator = CachingAllocator(backend: DriverMemoryBackend(device: self), deviceIndex: index)
    }

    /// Makes this device's primary context current on the calling thread.
    @inline(__always)
    public func makeCurrent() {
        driver.require(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent(device \(index))")
    }

    /// Waits for all work on this device, on every stream.
    public func synchronize() {
        if stream.refusedDuringCapture("a wait for the device") { return }
        makeCurrent()
        DeviceCounters.hostWaits.add()
        driver.require(driver.cuCtxSynchronize(), "cuCtxSynchronize(device \(index))")
    }

    /// Free and total device memory in bytes, as the driver sees it (other processes included).
    public func memoryInfo() -> (free: Int, total: Int) {
        makeCurrent()
        var free = 0
        var total = 0
        driver.require(driver.cuMemGetInfo(&free, &total), "cuMemGetInfo_v2(device \(index))")
        return (free, total)
    }

    /// This device's cuBLAS handle, bound to ``stream``; created (and libcublas loaded) on first use.
    public func blas() throws -> CUBLAS { try lazily(\.blasHandle) { try CUBLAS(device: self, stream: stream) } }

    /// This device's side streams for independent GEMMs; created on first use.
    public func gemmLanes() throws -> GemmLanes { try lazily(\.lanes) { try GemmLanes(device: self) } }

    /// This device's NVRTC kernel compiler; created (and libnvrtc loaded) on first use.
    public func compiler() throws -> KernelCompiler { try lazily(\.kernelCompiler) { try KernelCompiler(device: self) } }

    /// This device's cuBLASLt handle (GEMMs with fused epilogues), beside ``blas()``'s; created on first use.
    public func blasLt() throws -> CUBLASLt {
        let blas = try blas()
        return try lazily(\.blasLtHandle) { try CUBLASLt(blas: blas) }
    }

    /// The object in `slot`, made by `make` under the lock the first time it is asked for.
    private func lazily<T>(_ slot: ReferenceWritableKeyPath<CUDADevice, T?>, _ make: () throws -> T) throws -> T {
        try lock.withLock {
            if let made = self[keyPath: slot] { return made }
            let made = try make()
            self[keyPath: slot] = made
            return made
        }
    }
}
