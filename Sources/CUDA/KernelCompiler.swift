#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How to compile a kernel module.
public struct KernelOptions: Sendable, Hashable {
    /// `--use_fast_math`: approximate division, square root and transcendentals, flush denormals to zero.
    public var useFastMath: Bool
    /// Compile for the architecture-specific target (`sm_90a` instead of `sm_90`), which unlocks
    /// Hopper's wgmma/TMA instructions; the code then runs only on that exact architecture.
    public var architectureSpecific: Bool
    /// Extra NVRTC options, e.g. `["-DTILE=128", "-lineinfo"]`.
    public var extraOptions: [String]

    public init(useFastMath: Bool = false, architectureSpecific: Bool = false, extraOptions: [String] = []) {
        self.useFastMath = useFastMath
        self.architectureSpecific = architectureSpecific
        self.extraOptions = extraOptions
    }
}

/// Compiles CUDA C++ source held in Swift strings for one device, with NVRTC, and caches the result.
///
/// - Target: the device's exact architecture (`--gpu-architecture=sm_90` on an H100), producing a CUBIN
///   that loads without JIT. When the NVRTC found is too old to know the device's architecture, it targets
///   the newest virtual architecture it knows (`compute_XY`) and the driver JIT-compiles the PTX.
/// - Options always given: `-std=c++17`, `-default-device` (functions without `__global__`/`__device__`
///   are device functions), the architecture; `--use_fast_math` only when ``KernelOptions/useFastMath``.
/// - Caches: in memory (per compiler, for the life of the process) and on disk under
///   ``KernelDiskCache/defaultDirectory(environment:)``, keyed by ``KernelCacheKey`` (source, name,
///   options, architecture, NVRTC version). A failed disk write is reported once on stderr and compilation
///   goes on; a damaged cache file is ignored and rewritten.
///
/// Kernel source must not `#include` CUDA headers (`cuda_fp16.h`, `cuda_bf16.h`, ...): NVRTC does not
/// always ship them, and a user's machine may have only the driver and the runtime libraries. Kernels
/// define what they need themselves, e.g. bfloat16 as `unsigned short` with
/// `__uint_as_float((unsigned)h << 16)` to widen and round-to-nearest-even bit arithmetic to narrow.
/// Kernels are declared `extern "C" __global__` so they are found by their plain names.
///
/// ```swift
/// let module = try gpu.compiler().module(source: source, name: "elementwise")
/// let scale = try module.function("scale_f32")
/// launch(scale, grid: (blocks, 1, 1), block: (256, 1, 1), stream: gpu.stream,
///        arguments: [.pointer(x), .pointer(y), .float(2), .int32(Int32(n))])
/// ```
public final class KernelCompiler: @unchecked Sendable {
    /// The architecture code is generated for: "sm_90", "sm_90a", or "compute_XY" when NVRTC lacks the real one.
    public let architecture: String
    /// The NVRTC version used, "12.4".
    public let compilerVersion: String
    /// Where compiled modules are kept between runs; nil when no cache directory could be determined.
    public let diskCache: KernelDiskCache?

    private let device: CUDADevice
    private let nvrtc: NVRTC
    private let producesCUBIN: Bool
    private let lock = Lock()
    private var modules: [ModuleKey: CUDAModule] = [:]
    private var reportedCacheFailure = false

    private struct ModuleKey: Hashable {
        var source: String
        var name: String
        var options: KernelOptions
    }

    /// A compiler for `device`, caching on disk in `cacheDirectory` (default: ``KernelDiskCache/defaultDirectory(environment:)``).
    public init(device: CUDADevice, cacheDirectory: String? = KernelDiskCache.defaultDirectory()) throws {
        self.device = device
        nvrtc = try NVRTC.shared()
        compilerVersion = nvrtc.versionString
        let wanted = device.computeCapability.number
        let supported = nvrtc.supportedArchitectures
        if supported.isEmpty || supported.contains(wanted) {
            architecture = device.computeCapability.smName
            producesCUBIN = true
        } else if let fallback = supported.last(where: { $0 <= wanted }) {
            architecture = "compute_\(fallback)"
            producesCUBIN = false
        } else {
            throw CUDAError.unsupported(
                feature: "kernel compilation for \(device.name) (compute capability \(device.computeCapability))",
                reason: "NVRTC \(nvrtc.versionString) at \(nvrtc.library.path) supports only \(supported.map { "sm_\($0)" }.joined(separator: ", ")). "
                    + "Install a matching NVRTC or point \(LibraryLoader.environmentVariable) at one.")
        }
        diskCache = cacheDirectory.map(KernelDiskCache.init(directory:))
    }

    /// Whether modules compiled with ``KernelOptions/architectureSpecific`` get Hopper's `sm_90a`
    /// target (wgmma): a compute capability 9.x device and an NVRTC that builds its CUBIN.
    public var targetsHopperFeatures: Bool { producesCUBIN && device.computeCapability.major == 9 }

    /// The NVRTC options a module is compiled with.
    public func compileOptions(_ options: KernelOptions) -> [String] {
        var target = architecture
        // The "a" suffix exists for real architectures from sm_90 on.
        if options.architectureSpecific && producesCUBIN && device.computeCapability.major >= 9 { target += "a" }
        var result = ["--gpu-architecture=\(target)", "-std=c++17", "-default-device"]
        if options.useFastMath { result.append("--use_fast_math") }
        result += options.extraOptions
        return result
    }

    /// Compiles (or fetches from a cache) and loads a module.
    /// Keep the returned module or its functions: a lookup hashes the whole source.
    /// - Throws: ``CUDAError/compileFailed(name:log:)`` with NVRTC's full log when the source does not compile.
    public func module(source: String, name: String, options: KernelOptions = KernelOptions()) throws -> CUDAModule {
        let key = ModuleKey(source: source, name: name, options: options)
        if let cached = lock.withLock({ modules[key] }) { return cached }

        let nvrtcOptions = compileOptions(options)
        let cacheKey = KernelCacheKey.make(source: source, name: name, options: nvrtcOptions,
                                           architecture: architecture, compilerVersion: compilerVersion)
        let binary: KernelBinary
        if let stored = diskCache?.load(key: cacheKey) {
            binary = stored
        } else {
            binary = try nvrtc.compile(source: source, name: name, options: nvrtcOptions, wantCUBIN: producesCUBIN)
            if let diskCache {
                do {
                    try diskCache.store(binary, key: cacheKey)
                } catch {
                    reportCacheFailure(error)
                }
            }
        }
        let module = try CUDAModule(binary: binary, name: name, device: device)
        return lock.withLock {
            if let raced = modules[key] { return raced }
            modules[key] = module
            return module
        }
    }

    private func reportCacheFailure(_ error: any Error) {
        let first = lock.withLock { () -> Bool in
            defer { reportedCacheFailure = true }
            return !reportedCacheFailure
        }
        if first {
            let message = "fastmoe: warning: \(error); compiled kernels will not be reused by the next run\n"
            _ = message.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
        }
    }
}

/// A loaded module of compiled kernels (`CUmodule`).
public final class CUDAModule: @unchecked Sendable {
    /// The name given at compilation (used in messages).
    public let name: String
    /// The `CUmodule` handle.
    public let handle: OpaquePointer
    let driver: Driver
    let context: OpaquePointer
    private let lock = Lock()
    private var functions: [String: CUDAFunction] = [:]

    /// Loads CUBIN or PTX (NUL-terminated) into `device`'s context.
    public init(binary: KernelBinary, name: String, device: CUDADevice) throws {
        self.name = name
        let driver = device.driver
        self.driver = driver
        context = device.context
        device.makeCurrent()
        var module: OpaquePointer? = nil
        let result = binary.bytes.withUnsafeBytes { driver.cuModuleLoadData(&module, $0.baseAddress) }
        try driver.check(result, "cuModuleLoadData(\(name), \(binary.format == .cubin ? "CUBIN" : "PTX"), \(binary.bytes.count) bytes)")
        guard let module else { throw CUDAError.invalidArgument("cuModuleLoadData(\(name)) returned no module") }
        handle = module
    }

    deinit {
        _ = driver.cuCtxSetCurrent(context)
        _ = driver.cuModuleUnload(handle)
    }

    /// The kernel `name` (declared `extern "C" __global__`); looked up once, then cached.
    /// - Throws: ``CUDAError/functionNotFound(function:module:)``.
    public func function(_ name: String) throws -> CUDAFunction {
        try lock.withLock {
            if let cached = functions[name] { return cached }
            _ = driver.cuCtxSetCurrent(context)
            var function: OpaquePointer? = nil
            let result = driver.cuModuleGetFunction(&function, handle, name)
            guard result == DriverConstant.success, let function else {
                if result == 500 /* CUDA_ERROR_NOT_FOUND */ || function == nil {
                    throw CUDAError.functionNotFound(function: name, module: self.name)
                }
                throw driver.error(result, "cuModuleGetFunction(\(name))")
            }
            let wrapped = CUDAFunction(name: name, handle: function, module: self)
            functions[name] = wrapped
            return wrapped
        }
    }
}

/// A kernel in a loaded module (`CUfunction`); launch it with ``launch(_:grid:block:sharedMemory:stream:arguments:)``.
public final class CUDAFunction: @unchecked Sendable {
    /// The kernel's name.
    public let name: String
    /// The `CUfunction` handle.
    public let handle: OpaquePointer
    /// The module that holds the code (kept alive by this function).
    public let module: CUDAModule

    init(name: String, handle: OpaquePointer, module: CUDAModule) {
        self.name = name
        self.handle = handle
        self.module = module
    }

    /// Allows launches with up to `bytes` of dynamic shared memory (needed above 48 KiB; at most
    /// ``CUDADevice/maxSharedMemoryPerBlockOptin``).
    public func setMaxDynamicSharedMemory(_ bytes: Int) throws {
        let driver = module.driver
        _ = driver.cuCtxSetCurrent(module.context)
        try driver.check(driver.cuFuncSetAttribute(handle, DriverConstant.functionAttributeMaxDynamicSharedSizeBytes, Int32(bytes)),
                         "cuFuncSetAttribute(\(name), MAX_DYNAMIC_SHARED_SIZE_BYTES, \(bytes))")
    }

    /// How many blocks of `threads` threads and `sharedBytes` of dynamic shared memory one SM holds
    /// at once, given the kernel's registers and static shared memory (at least 1).
    public func residentBlocksPerMultiprocessor(threads: Int, sharedBytes: Int) throws -> Int {
        let driver = module.driver
        _ = driver.cuCtxSetCurrent(module.context)
        var blocks: Int32 = 0
        try driver.check(driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, handle, Int32(threads), sharedBytes),
                         "cuOccupancyMaxActiveBlocksPerMultiprocessor(\(name), \(threads), \(sharedBytes))")
        return max(Int(blocks), 1)
    }
}
