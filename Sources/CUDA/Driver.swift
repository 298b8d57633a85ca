#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A `CUresult` from the driver API; 0 is `CUDA_SUCCESS`.
public typealias CUresult = Int32
/// A device pointer (`CUdeviceptr`, 64-bit). Under unified addressing it is also the `void*` that
/// cuBLAS and NCCL take, so this module passes it to them as a 64-bit integer (same register, same ABI).
public typealias CUdeviceptr = UInt64

/// Values from cuda.h that this module uses (checked against the header's enums).
enum DriverConstant {
    static let success: CUresult = 0
    static let errorOutOfMemory: CUresult = 2            // CUDA_ERROR_OUT_OF_MEMORY
    static let errorNotReady: CUresult = 600             // CUDA_ERROR_NOT_READY
    static let attributeMaxThreadsPerBlock: Int32 = 1    // CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK
    static let attributeMultiprocessorCount: Int32 = 16  // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
    static let attributeComputeCapabilityMajor: Int32 = 75
    static let attributeComputeCapabilityMinor: Int32 = 76
    static let attributeMaxSharedMemoryPerBlockOptin: Int32 = 97
    static let functionAttributeMaxDynamicSharedSizeBytes: Int32 = 8  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    static let streamNonBlocking: UInt32 = 1             // CU_STREAM_NON_BLOCKING
    static let eventDefault: UInt32 = 0                  // CU_EVENT_DEFAULT
    static let eventDisableTiming: UInt32 = 2            // CU_EVENT_DISABLE_TIMING
}

/// The driver's stream-capture and graph functions, bound together: all or none.
public struct GraphFunctions: @unchecked Sendable {
    public typealias Handle = OpaquePointer
    /// (stream, mode): `CU_STREAM_CAPTURE_MODE_RELAXED` is 2.
    public let cuStreamBeginCapture: @convention(c) (Handle?, Int32) -> CUresult
    public let cuStreamEndCapture: @convention(c) (Handle?, UnsafeMutablePointer<Handle?>?) -> CUresult
    public let cuGraphInstantiateWithFlags: @convention(c) (UnsafeMutablePointer<Handle?>?, Handle?, UInt64) -> CUresult
    public let cuGraphLaunch: @convention(c) (Handle?, Handle?) -> CUresult
    public let cuGraphExecDestroy: @convention(c) (Handle?) -> CUresult
    public let cuGraphDestroy: @convention(c) (Handle?) -> CUresult
    /// (graph, nodes or nil, count in/out).
    public let cuGraphGetNodes: @convention(c) (Handle?, UnsafeMutablePointer<Handle?>?, UnsafeMutablePointer<Int>?) -> CUresult

    init?(_ library: LoadedLibrary) {
        guard let begin = library.optionalSymbol("cuStreamBeginCapture_v2", as: (@convention(c) (Handle?, Int32) -> CUresult).self),
              let end = library.optionalSymbol("cuStreamEndCapture", as: (@convention(c) (Handle?, UnsafeMutablePointer<Handle?>?) -> CUresult).self),
              let instantiate = library.optionalSymbol("cuGraphInstantiateWithFlags",
                                                       as: (@convention(c) (UnsafeMutablePointer<Handle?>?, Handle?, UInt64) -> CUresult).self),
              let launch = library.optionalSymbol("cuGraphLaunch", as: (@convention(c) (Handle?, Handle?) -> CUresult).self),
              let execDestroy = library.optionalSymbol("cuGraphExecDestroy", as: (@convention(c) (Handle?) -> CUresult).self),
              let destroy = library.optionalSymbol("cuGraphDestroy", as: (@convention(c) (Handle?) -> CUresult).self),
              let nodes = library.optionalSymbol("cuGraphGetNodes",
                                                 as: (@convention(c) (Handle?, UnsafeMutablePointer<Handle?>?, UnsafeMutablePointer<Int>?) -> CUresult).self)
        else { return nil }
        (cuStreamBeginCapture, cuStreamEndCapture, cuGraphInstantiateWithFlags) = (begin, end, instantiate)
        (cuGraphLaunch, cuGraphExecDestroy, cuGraphDestroy, cuGraphGetNodes) = (launch, execDestroy, destroy, nodes)
    }
}

/// The CUDA driver API (`libcuda.so.1`), bound with `dlsym` to its versioned symbol names.
///
/// The function pointers are public as an escape hatch; the wrappers in this module
/// (``CUDADevice``, ``CUDAStream``, ``CUDAEvent``, ``CachingAllocator``, ``KernelCompiler``,
/// ``launch(_:grid:block:sharedMemory:stream:arguments:)``) are the intended API.
/// Handles (`CUcontext`, `CUstream`, `CUevent`, `CUmodule`, `CUfunction`) are `OpaquePointer`s.
public final class Driver: @unchecked Sendable {
    public typealias Handle = OpaquePointer

    /// The loaded library.
    public let library: LoadedLibrary
    /// `cuDriverGetVersion`: 1000 * major + 10 * minor, e.g. 12040 for CUDA 12.4.
    public let version: Int32
    /// Number of devices the driver reports (after `CUDA_VISIBLE_DEVICES`).
    public let deviceCount: Int

    public let cuInit: @convention(c) (UInt32) -> CUresult
    public let cuDriverGetVersion: @convention(c) (UnsafeMutablePointer<Int32>?) -> CUresult
    public let cuDeviceGetCount: @convention(c) (UnsafeMutablePointer<Int32>?) -> CUresult
    public let cuDeviceGet: @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> CUresult
    public let cuDeviceGetName: @convention(c) (UnsafeMutablePointer<CChar>?, Int32, Int32) -> CUresult
    public let cuDeviceGetAttribute: @convention(c) (UnsafeMutablePointer<Int32>?, Int32, Int32) -> CUresult
    public let cuDeviceTotalMem: @convention(c) (UnsafeMutablePointer<Int>?, Int32) -> CUresult
    public let cuDevicePrimaryCtxRetain: @convention(c) (UnsafeMutablePointer<Handle?>?, Int32) -> CUresult
    public let cuCtxSetCurrent: @convention(c) (Handle?) -> CUresult
    public let cuCtxGetCurrent: @convention(c) (UnsafeMutablePointer<Handle?>?) -> CUresult
    public let cuCtxSynchronize: @convention(c) () -> CUresult
    public let cuMemAlloc: @convention(c) (UnsafeMutablePointer<CUdeviceptr>?, Int) -> CUresult
    public let cuMemFree: @convention(c) (CUdeviceptr) -> CUresult
    public let cuMemAllocHost: @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>?, Int) -> CUresult
    public let cuMemFreeHost: @convention(c) (UnsafeMutableRawPointer?) -> CUresult
    public let cuMemcpyHtoDAsync: @convention(c) (CUdeviceptr, UnsafeRawPointer?, Int, Handle?) -> CUresult
    public let cuMemcpyDtoHAsync: @convention(c) (UnsafeMutableRawPointer?, CUdeviceptr, Int, Handle?) -> CUresult
    public let cuMemcpyDtoDAsync: @convention(c) (CUdeviceptr, CUdeviceptr, Int, Handle?) -> CUresult
    public let cuMemsetD8Async: @convention(c) (CUdeviceptr, UInt8, Int, Handle?) -> CUresult
    public let cuMemsetD32Async: @convention(c) (CUdeviceptr, UInt32, Int, Handle?) -> CUresult
    public let cuMemGetInfo: @convention(c) (UnsafeMutablePointer<Int>?, UnsafeMutablePointer<Int>?) -> CUresult
    public let cuStreamCreate: @convention(c) (UnsafeMutablePointer<Handle?>?, UInt32) -> CUresult
    public let cuStreamDestroy: @convention(c) (Handle?) -> CUresult
    public let cuStreamSynchronize: @convention(c) (Handle?) -> CUresult
    public let cuStreamWaitEvent: @convention(c) (Handle?, Handle?, UInt32) -> CUresult
    public let cuEventCreate: @convention(c) (UnsafeMutablePointer<Handle?>?, UInt32) -> CUresult
    public let cuEventDestroy: @convention(c) (Handle?) -> CUresult
    public let cuEventRecord: @convention(c) (Handle?, Handle?) -> CUresult
    public let cuEventSynchronize: @convention(c) (Handle?) -> CUresult
    public let cuEventQuery: @convention(c) (Handle?) -> CUresult
    public let cuEventElapsedTime: @convention(c) (UnsafeMutablePointer<Float>?, Handle?, Handle?) -> CUresult
    public let cuModuleLoadData: @convention(c) (UnsafeMutablePointer<Handle?>?, UnsafeRawPointer?) -> CUresult
    public let cuModuleGetFunction: @convention(c) (UnsafeMutablePointer<Handle?>?, Handle?, UnsafePointer<CChar>?) -> CUresult
    public let cuModuleUnload: @convention(c) (Handle?) -> CUresult
    public let cuLaunchKernel: @convention(c) (
        Handle?, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, Handle?,
        UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?
    ) -> CUresult
    public let cuFuncSetAttribute: @convention(c) (Handle?, Int32, Int32) -> CUresult
    public let cuOccupancyMaxActiveBlocksPerMultiprocessor: @convention(c) (UnsafeMutablePointer<Int32>?, Handle?, Int32, Int) -> CUresult
    /// Describes a tensor for the Hopper tensor-memory accelerator (``TensorMap``); nil where the
    /// driver predates CUDA 12.
    public let cuTensorMapEncodeTiled: (@convention(c) (
        UnsafeMutableRawPointer?, Int32, UInt32, UnsafeMutableRawPointer?, UnsafePointer<UInt64>?, UnsafePointer<UInt64>?,
        UnsafePointer<UInt32>?, UnsafePointer<UInt32>?, Int32, Int32, Int32, Int32
    ) -> CUresult)?
    public let cuGetErrorName: @convention(c) (CUresult, UnsafeMutablePointer<UnsafePointer<CChar>?>?) -> CUresult
    public let cuGetErrorString: @convention(c) (CUresult, UnsafeMutablePointer<UnsafePointer<CChar>?>?) -> CUresult
    /// Stream capture and graphs (``CUDAGraph``); nil where the driver predates `cuGraphInstantiateWithFlags` (CUDA 11.4).
    public let graphs: GraphFunctions?

    /// The process-wide driver: loaded, bound and `cuInit`-ed once; the outcome (or its error) is kept.
    public static func shared() throws -> Driver {
        try sharedResult.get()
    }

    private static let sharedResult: Result<Driver, CUDAError> = LibraryLoader.capture {
        try Driver(library: LibraryLoader.load(name: "libcuda", candidates: ["libcuda.so.1", "libcuda.so"]))
    }

    /// Binds every function from `library` and initializes the driver.
    /// Symbols are the versioned names that cuda.h maps the API names to (`cuMemAlloc` → `cuMemAlloc_v2`).
    init(library: LoadedLibrary) throws {
        self.library = library
        cuInit = try library.symbol("cuInit")
        cuDriverGetVersion = try library.symbol("cuDriverGetVersion")
        cuDeviceGetCount = try library.symbol("cuDeviceGetCount")
        cuDeviceGet = try library.symbol("cuDeviceGet")
        cuDeviceGetName = try library.symbol("cuDeviceGetName")
        cuDeviceGetAttribute = try library.symbol("cuDeviceGetAttribute")
        cuDeviceTotalMem = try library.symbol("cuDeviceTotalMem_v2")
        cuDevicePrimaryCtxRetain = try library.symbol("cuDevicePrimaryCtxRetain")
        cuCtxSetCurrent = try library.symbol("cuCtxSetCurrent")
        cuCtxGetCurrent = try library.symbol("cuCtxGetCurrent")
        cuCtxSynchronize = try library.symbol("cuCtxSynchronize")
        cuMemAlloc = try library.symbol("cuMemAlloc_v2")
        cuMemFree = try library.symbol("cuMemFree_v2")
        cuMemAllocHost = try library.symbol("cuMemAllocHost_v2")
        cuMemFreeHost = try library.symbol("cuMemFreeHost")
        cuMemcpyHtoDAsync = try library.symbol("cuMemcpyHtoDAsync_v2")
        cuMemcpyDtoHAsync = try library.symbol("cuMemcpyDtoHAsync_v2")
        cuMemcpyDtoDAsync = try library.symbol("cuMemcpyDtoDAsync_v2")
        cuMemsetD8Async = try library.symbol("cuMemsetD8Async")
        cuMemsetD32Async = try library.symbol("cuMemsetD32Async")
        cuMemGetInfo = try library.symbol("cuMemGetInfo_v2")
        cuStreamCreate = try library.symbol("cuStreamCreate")
        cuStreamDestroy = try library.symbol("cuStreamDestroy_v2")
        cuStreamSynchronize = try library.symbol("cuStreamSynchronize")
        cuStreamWaitEvent = try library.symbol("cuStreamWaitEvent")
        cuEventCreate = try library.symbol("cuEventCreate")
        cuEventDestroy = try library.symbol("cuEventDestroy_v2")
        cuEventRecord = try library.symbol("cuEventRecord")
        cuEventSynchronize = try library.symbol("cuEventSynchronize")
        cuEventQuery = try library.symbol("cuEventQuery")
        cuEventElapsedTime = try library.symbol("cuEventElapsedTime")
        cuModuleLoadData = try library.symbol("cuModuleLoadData")
        cuModuleGetFunction = try library.symbol("cuModuleGetFunction")
        cuModuleUnload = try library.symbol("cuModuleUnload")
        cuLaunchKernel = try library.symbol("cuLaunchKernel")
        cuFuncSetAttribute = try library.symbol("cuFuncSetAttribute")
        cuOccupancyMaxActiveBlocksPerMultiprocessor = try library.symbol("cuOccupancyMaxActiveBlocksPerMultiprocessor")
        cuTensorMapEncodeTiled = library.optionalSymbol("cuTensorMapEncodeTiled")
        cuGetErrorName = try library.symbol("cuGetErrorName")
        cuGetErrorString = try library.symbol("cuGetErrorString")
        graphs = GraphFunctions(library)

        // Temporaries: `self.check` is unavailable until every stored property is set.
        let initResult = cuInit(0)
        var driverVersion: Int32 = 0
        let versionResult = cuDriverGetVersion(&driverVersion)
        var count: Int32 = 0
        let countResult = initResult == 0 ? cuDeviceGetCount(&count) : initResult
        version = driverVersion
        deviceCount = Int(count)
        try check(initResult, "cuInit(0)")
        try check(versionResult, "cuDriverGetVersion")
        try check(countResult, "cuDeviceGetCount")
    }

    /// The driver's version as "12.4".
    public var versionString: String {
        "\(version / 1000).\((version % 1000) / 10)"
    }

    /// `CUDA_ERROR_...` name of a result code.
    public func errorName(_ result: CUresult) -> String {
        var pointer: UnsafePointer<CChar>? = nil
        _ = cuGetErrorName(result, &pointer)
        return string(fromC: pointer, fallback: "CUDA_ERROR_UNKNOWN_\(result)")
    }

    /// The driver's sentence for a result code.
    public func errorString(_ result: CUresult) -> String {
        var pointer: UnsafePointer<CChar>? = nil
        _ = cuGetErrorString(result, &pointer)
        return string(fromC: pointer, fallback: "unrecognized error code")
    }

    /// The error for a failed call.
    public func error(_ result: CUresult, _ call: @autoclosure () -> String) -> CUDAError {
        .driverCall(call: call(), code: result, name: errorName(result), message: errorString(result))
    }

    /// Throws when a setup call failed.
    @inline(__always)
    public func check(_ result: CUresult, _ call: @autoclosure () -> String) throws {
        if result != DriverConstant.success { throw error(result, call()) }
    }

    /// Stops the program when a per-op call failed. A failure here (an illegal address from an earlier
    /// kernel, a launch with a bad configuration) leaves the context unusable, so there is nothing to
    /// recover; the message names the call and the CUDA error.
    @inline(__always)
    public func require(_ result: CUresult, _ call: @autoclosure () -> String) {
        if result != DriverConstant.success { fatalError(error(result, call()).description) }
    }
}
