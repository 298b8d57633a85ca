// # The CUDA target: NVIDIA libraries loaded at run time
//
// This target binds the driver API (libcuda.so.1), NVRTC (libnvrtc.so.13/.12), cuBLAS with cuBLASLt
// (libcublas.so.13/.12, libcublasLt.so.13/.12) and NCCL (libnccl.so.2) without headers or link-time
// dependencies: each library is opened with dlopen the first time it is needed, and each function is
// looked up with dlsym under the exact symbol the C headers map its name to (cuMemAlloc → cuMemAlloc_v2,
// cublasCreate → cublasCreate_v2, ...), with a @convention(c) type written from the documented C
// signature. So the package builds, and its CPU tests run, on a machine with no GPU and no CUDA.
//
// Where libraries are looked for (LibraryLoader): FASTMOE_CUDA_LIBRARY_PATH's directories first, then the
// dynamic loader's default search, then /usr/local/cuda/lib64, /usr/local/cuda/targets/<arch>-linux/lib,
// /usr/lib/<arch>-linux-gnu, /usr/lib64, /usr/local/nvidia/lib64, /usr/lib/wsl/lib, $CONDA_PREFIX/lib, and the
// lib folders of NVIDIA's pip wheels (site-packages/nvidia/*/lib). For NVRTC and cuBLAS the driver's major
// version is preferred (a newer toolkit library needs a newer driver). Companions a library opens by name
// are preloaded from the same folder (libcublasLt before libcublas, libnvrtc-builtins after libnvrtc), so a
// pip-wheel folder works without LD_LIBRARY_PATH. A library that cannot be found is a thrown
// CUDAError.libraryNotFound that lists every path tried with dlerror's reason and names the variable to set.
//
// Each library is loaded once per process; the outcome, success or error, is kept (`Driver.shared()`,
// `NVRTC.shared()`, `NCCL.shared()`). `CUDA.diagnostics()` reports all of them for `fastmoe info`.
//
// Error policy: setup throws CUDAError (loading, devices, streams, events, handles, compiling, allocating,
// NCCL). Per-op calls (copies, memsets, launches, GEMMs, synchronization) stop the program with the CUDA
// error's name, the call and its arguments: by then the context is unusable and nothing can be recovered.

/// Entry point: is there a GPU, which devices, and what was loaded.
///
/// ```swift
/// if CUDA.isAvailable {
///     let gpu = try CUDA.device(0)
///     print(gpu.name, gpu.computeCapability)
/// }
/// print(CUDA.diagnostics())
/// ```
public enum CUDA {
    /// True when libcuda loads, `cuInit` succeeds and at least one device is visible. Never crashes.
    public static var isAvailable: Bool {
        deviceCount > 0
    }

    /// Number of visible devices; 0 when the driver is missing or fails to initialize.
    public static var deviceCount: Int {
        (try? Driver.shared())?.deviceCount ?? 0
    }

    private static let registryLock = Lock()
    nonisolated(unsafe) private static var devices: [Int: CUDADevice] = [:]

    /// Device `index`, opened on first use (primary context retained, default stream created).
    /// - Throws: the driver's load error, ``CUDAError/deviceIndexOutOfRange(index:count:)``, or a driver error.
    public static func device(_ index: Int) throws -> CUDADevice {
        let driver = try Driver.shared()
        guard index >= 0 && index < driver.deviceCount else {
            throw CUDAError.deviceIndexOutOfRange(index: index, count: driver.deviceCount)
        }
        return try registryLock.withLock {
            if let device = devices[index] { return device }
            let device = try CUDADevice(index: index, driver: driver)
            devices[index] = device
            return device
        }
    }

    /// What each NVIDIA library resolved to, and the visible devices, for `fastmoe info`.
    /// Loading is attempted here if it was not yet; nothing is thrown.
    public static func diagnostics() -> CUDADiagnostics {
        var libraries: [LibraryDiagnostic] = []
        func record(_ name: String, _ body: () throws -> (path: String, version: String)) {
            do {
                let (path, version) = try body()
                libraries.append(LibraryDiagnostic(library: name, status: .loaded(path: path, version: version)))
            } catch {
                libraries.append(LibraryDiagnostic(library: name, status: .unavailable(reason: "\(error)")))
            }
        }
        record("driver (libcuda)") {
            let driver = try Driver.shared()
            return (driver.library.path, "CUDA \(driver.versionString) (\(driver.version))")
        }
        record("nvrtc") {
            let nvrtc = try NVRTC.shared()
            let archs = nvrtc.supportedArchitectures.isEmpty ? "" :
                ", targets sm_\(nvrtc.supportedArchitectures.first!)...sm_\(nvrtc.supportedArchitectures.last!)"
            return (nvrtc.library.path, nvrtc.versionString + archs)
        }
        record("cublas") {
            let (cublas, _) = try CUBLAS.loadLibraries()
            return (cublas.path, CUBLAS.libraryVersion(cublas) ?? "unknown version")
        }
        record("cublasLt") {
            let (_, lt) = try CUBLAS.loadLibraries()
            typealias GetVersion = @convention(c) () -> Int
            let version = lt.optionalSymbol("cublasLtGetVersion", as: GetVersion.self).map { String($0()) } ?? "unknown version"
            return (lt.path, version)
        }
        record("nccl") {
            let nccl = try NCCL.shared()
            return (nccl.library.path, nccl.versionString)
        }

        var summaries: [DeviceSummary] = []
        var deviceError: String? = nil
        do {
            let driver = try Driver.shared()
            for index in 0..<driver.deviceCount {
                let device = try CUDA.device(index)
                summaries.append(DeviceSummary(
                    index: index, name: device.name, computeCapability: device.computeCapability,
                    multiprocessorCount: device.multiprocessorCount, totalMemory: device.totalMemory))
            }
            if driver.deviceCount == 0 { deviceError = "the driver reports no devices (check CUDA_VISIBLE_DEVICES)" }
        } catch {
            deviceError = "\(error)"
        }
        return CUDADiagnostics(libraries: libraries, devices: summaries, deviceError: deviceError)
    }
}

/// One library's line in ``CUDADiagnostics``.
public struct LibraryDiagnostic: Sendable, Equatable {
    public enum Status: Sendable, Equatable {
        /// Loaded from `path`; `version` as the library reports it.
        case loaded(path: String, version: String)
        /// Not loaded; `reason` is the error's full text (paths tried, what to set).
        case unavailable(reason: String)
    }

    /// "driver (libcuda)", "nvrtc", "cublas", "cublasLt", "nccl".
    public let library: String
    public let status: Status
}

/// A visible GPU, as listed by ``CUDA/diagnostics()``.
public struct DeviceSummary: Sendable, Equatable {
    public let index: Int
    public let name: String
    public let computeCapability: ComputeCapability
    public let multiprocessorCount: Int
    public let totalMemory: Int
}

/// Everything `fastmoe info` prints about CUDA.
public struct CUDADiagnostics: Sendable, Equatable, CustomStringConvertible {
    /// driver, nvrtc, cublas, cublasLt, nccl, in that order.
    public let libraries: [LibraryDiagnostic]
    public let devices: [DeviceSummary]
    /// Why no device is listed, when none is.
    public let deviceError: String?

    public var description: String {
        var lines: [String] = []
        for entry in libraries {
            switch entry.status {
            case let .loaded(path, version): lines.append("\(entry.library): \(version) at \(path)")
            case let .unavailable(reason):
                let firstLine = reason.split(separator: "\n", maxSplits: 1).first.map(String.init) ?? reason
                lines.append("\(entry.library): not available: \(firstLine)")
            }
        }
        for device in devices {
            lines.append("GPU \(device.index): \(device.name), compute capability \(device.computeCapability), "
                + "\(device.multiprocessorCount) SMs, \(describeBytes(device.totalMemory))")
        }
        if let deviceError { lines.append("GPUs: none usable: \(deviceError.split(separator: "\n").first ?? "")") }
        return lines.joined(separator: "\n")
    }
}
