/// Everything that can go wrong when talking to the NVIDIA libraries, as a thrown error whose
/// description says what failed and what to do about it.
///
/// Setup calls (loading a library, creating contexts, streams, events, handles, compiling kernels,
/// allocating memory, NCCL calls) throw these. Per-op calls on the hot path (copies, memsets,
/// kernel launches, GEMMs, synchronization) do not throw: a failure there means the GPU state is
/// already broken (an illegal address poisons the context), so they stop the program with a
/// message built from the same cases (see ``CUDAError/description``).
public enum CUDAError: Error, CustomStringConvertible, Sendable, Equatable {
    /// No candidate file of a library could be opened.
    /// `searched[i]` was tried and failed with `dlerrors[i]`.
    case libraryNotFound(name: String, candidates: [String], searched: [String], dlerrors: [String])
    /// A library was opened but lacks a function we need (usually: the library is too old).
    case symbolNotFound(symbol: String, library: String, path: String)
    /// A driver API call returned a non-zero `CUresult`.
    case driverCall(call: String, code: Int32, name: String, message: String)
    /// The driver loaded but reports no usable device.
    case noDevice(reason: String)
    /// A device index outside `0..<count` was asked for.
    case deviceIndexOutOfRange(index: Int, count: Int)
    /// NVRTC rejected a kernel source; `log` is NVRTC's complete program log.
    case compileFailed(name: String, log: String)
    /// An NVRTC call other than the compilation itself failed.
    case nvrtcCall(call: String, code: Int32, message: String)
    /// `cuModuleGetFunction` found no kernel of that name in the module.
    case functionNotFound(function: String, module: String)
    /// The device ran out of memory even after the allocator released its cache.
    case outOfMemory(device: Int, requested: Int, allocated: Int, reserved: Int, free: Int, total: Int)
    /// A cuBLAS call returned a non-zero `cublasStatus_t`.
    case cublasCall(call: String, status: Int32, name: String)
    /// An NCCL call returned a non-zero `ncclResult_t`.
    case ncclCall(call: String, code: Int32, message: String, detail: String)
    /// A capability is missing from the library version that was loaded.
    case unsupported(feature: String, reason: String)
    /// A value from outside the program (an id, a size) does not fit.
    case invalidArgument(String)
    /// Work captured into a CUDA graph did something a graph cannot replay (a read-back, a wait).
    case graphCaptureFailed(reason: String)

    public var description: String {
        switch self {
        case let .libraryNotFound(name, candidates, searched, dlerrors):
            var lines = ["could not load the NVIDIA library \(name) (file names tried: \(candidates.joined(separator: ", ")))."]
            lines.append("Paths tried, in order:")
            for (index, path) in searched.enumerated() {
                let reason = index < dlerrors.count ? dlerrors[index] : ""
                lines.append("  \(path): \(reason)")
            }
            lines.append("Install the NVIDIA driver / CUDA libraries (or the nvidia-* pip wheels), or set "
                + "\(LibraryLoader.environmentVariable) to a colon-separated list of directories that contain "
                + "\(candidates.first ?? name).")
            return lines.joined(separator: "\n")
        case let .symbolNotFound(symbol, library, path):
            return "the NVIDIA library \(library) at \(path) has no function \(symbol); it is probably too old. "
                + "Install a newer version, or point \(LibraryLoader.environmentVariable) at a directory with one."
        case let .driverCall(call, code, name, message):
            return "CUDA driver call \(call) failed: \(name) (\(code)): \(message)"
        case let .noDevice(reason):
            return "no CUDA device is usable: \(reason)"
        case let .deviceIndexOutOfRange(index, count):
            return "CUDA device \(index) does not exist: this machine has \(count) device(s) (indices 0..<\(count)). "
                + "Check CUDA_VISIBLE_DEVICES and the device index you passed."
        case let .compileFailed(name, log):
            return "NVRTC could not compile the kernel module '\(name)'. NVRTC log:\n\(log)"
        case let .nvrtcCall(call, code, message):
            return "NVRTC call \(call) failed: \(message) (\(code))"
        case let .functionNotFound(function, module):
            return "kernel module '\(module)' has no kernel named '\(function)'. Kernels must be declared "
                + "extern \"C\" __global__ so that their names are not mangled."
        case let .outOfMemory(device, requested, allocated, reserved, free, total):
            return "CUDA device \(device) is out of memory: tried to allocate \(describeBytes(requested)); "
                + "allocated by tensors: \(describeBytes(allocated)); reserved by the caching allocator: "
                + "\(describeBytes(reserved)); free on the device: \(describeBytes(free)) of \(describeBytes(total)). "
                + "Reduce the batch size or model size, or free other processes' memory on this GPU."
        case let .cublasCall(call, status, name):
            return "cuBLAS call \(call) failed: \(name) (\(status))"
        case let .ncclCall(call, code, message, detail):
            let extra = detail.isEmpty ? "" : " (\(detail))"
            return "NCCL call \(call) failed: \(message) (\(code))\(extra). Set NCCL_DEBUG=INFO for details."
        case let .unsupported(feature, reason):
            return "\(feature) is not available: \(reason)"
        case let .invalidArgument(message):
            return message
        case let .graphCaptureFailed(reason):
            return "the work could not be captured as a CUDA graph: \(reason)"
        }
    }
}
