#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// NVRTC (`libnvrtc.so.13` / `.12`): compiles CUDA C++ held in strings to CUBIN or PTX.
final class NVRTC: @unchecked Sendable {
    typealias Program = OpaquePointer
    typealias Result = Int32  // nvrtcResult; 0 is NVRTC_SUCCESS, 6 is NVRTC_ERROR_COMPILATION

    let library: LoadedLibrary
    let major: Int
    let minor: Int
    /// Real architectures NVRTC can generate code for, ascending (e.g. [50, 52, ..., 90]).
    let supportedArchitectures: [Int]

    let nvrtcVersion: @convention(c) (UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<Int32>?) -> Result
    let nvrtcGetErrorString: @convention(c) (Result) -> UnsafePointer<CChar>?
    let nvrtcCreateProgram: @convention(c) (
        UnsafeMutablePointer<Program?>?, UnsafePointer<CChar>?, UnsafePointer<CChar>?, Int32,
        UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<UnsafePointer<CChar>?>?
    ) -> Result
    let nvrtcCompileProgram: @convention(c) (Program?, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Result
    let nvrtcDestroyProgram: @convention(c) (UnsafeMutablePointer<Program?>?) -> Result
    let nvrtcGetProgramLogSize: @convention(c) (Program?, UnsafeMutablePointer<Int>?) -> Result
    let nvrtcGetProgramLog: @convention(c) (Program?, UnsafeMutablePointer<CChar>?) -> Result
    let nvrtcGetPTXSize: @convention(c) (Program?, UnsafeMutablePointer<Int>?) -> Result
    let nvrtcGetPTX: @convention(c) (Program?, UnsafeMutablePointer<CChar>?) -> Result
    let nvrtcGetCUBINSize: (@convention(c) (Program?, UnsafeMutablePointer<Int>?) -> Result)?
    let nvrtcGetCUBIN: (@convention(c) (Program?, UnsafeMutablePointer<CChar>?) -> Result)?

    /// The process-wide NVRTC, loaded once (preferring the major version of the installed driver).
    static func shared() throws -> NVRTC {
        try sharedResult.get()
    }

    private static let sharedResult: Swift.Result<NVRTC, CUDAError> = LibraryLoader.capture {
        let majors = preferredMajorVersions(available: [13, 12])
        return try NVRTC(library: LibraryLoader.load(name: "libnvrtc", candidates: majors.map { "libnvrtc.so.\($0)" }))
    }

    init(library: LoadedLibrary) throws {
        self.library = library
        nvrtcVersion = try library.symbol("nvrtcVersion")
        nvrtcGetErrorString = try library.symbol("nvrtcGetErrorString")
        nvrtcCreateProgram = try library.symbol("nvrtcCreateProgram")
        nvrtcCompileProgram = try library.symbol("nvrtcCompileProgram")
        nvrtcDestroyProgram = try library.symbol("nvrtcDestroyProgram")
        nvrtcGetProgramLogSize = try library.symbol("nvrtcGetProgramLogSize")
        nvrtcGetProgramLog = try library.symbol("nvrtcGetProgramLog")
        nvrtcGetPTXSize = try library.symbol("nvrtcGetPTXSize")
        nvrtcGetPTX = try library.symbol("nvrtcGetPTX")
        nvrtcGetCUBINSize = library.optionalSymbol("nvrtcGetCUBINSize")
        nvrtcGetCUBIN = library.optionalSymbol("nvrtcGetCUBIN")
        let getCount: (@convention(c) (UnsafeMutablePointer<Int32>?) -> Result)? =
            library.optionalSymbol("nvrtcGetNumSupportedArchs")
        let getArchs: (@convention(c) (UnsafeMutablePointer<Int32>?) -> Result)? =
            library.optionalSymbol("nvrtcGetSupportedArchs")

        var major: Int32 = 0
        var minor: Int32 = 0
        let versionResult = nvrtcVersion(&major, &minor)
        self.major = Int(major)
        self.minor = Int(minor)
        var architectures: [Int] = []
        if let getCount, let getArchs {
            var count: Int32 = 0
            if getCount(&count) == 0, count > 0 {
                var values = [Int32](repeating: 0, count: Int(count))
                if getArchs(&values) == 0 { architectures = values.map(Int.init).sorted() }
            }
        }
        supportedArchitectures = architectures
        try check(versionResult, "nvrtcVersion")
        // NVRTC dlopens libnvrtc-builtins by bare name; when NVRTC came from a folder the dynamic loader does
        // not search (a pip wheel, FASTMOE_CUDA_LIBRARY_PATH), preloading it from there lets that succeed.
        LibraryLoader.preloadCompanion(prefix: "libnvrtc-builtins.so.\(major)", inDirectoryOf: library.path)
    }

    var versionString: String { "\(major).\(minor)" }

    func check(_ result: Result, _ call: String) throws {
        if result != 0 {
            throw CUDAError.nvrtcCall(call: call, code: result,
                                      message: string(fromC: nvrtcGetErrorString(result), fallback: "NVRTC error"))
        }
    }

    /// Compiles `source` with `options`; returns CUBIN when `wantCUBIN` (a real `sm_XY` target), else PTX.
    /// - Throws: ``CUDAError/compileFailed(name:log:)`` with the whole NVRTC log.
    func compile(source: String, name: String, options: [String], wantCUBIN: Bool) throws -> KernelBinary {
        var program: Program? = nil
        try check(nvrtcCreateProgram(&program, source, name, 0, nil, nil), "nvrtcCreateProgram(\(name))")
        defer { _ = nvrtcDestroyProgram(&program) }

        let cOptions = options.map { strdup($0) }
        defer { cOptions.forEach { free($0) } }
        let compileResult = cOptions.map { UnsafePointer($0) }.withUnsafeBufferPointer { buffer in
            nvrtcCompileProgram(program, Int32(buffer.count), buffer.baseAddress)
        }
        let log = programLog(program)
        if compileResult != 0 {
            let reason = string(fromC: nvrtcGetErrorString(compileResult), fallback: "NVRTC error \(compileResult)")
            let text = log.isEmpty ? reason : log
            throw CUDAError.compileFailed(name: name, log: text + "\n(options: \(options.joined(separator: " ")))")
        }

        if wantCUBIN, let getSize = nvrtcGetCUBINSize, let get = nvrtcGetCUBIN {
            var size = 0
            try check(getSize(program, &size), "nvrtcGetCUBINSize(\(name))")
            if size > 0 {
                var bytes = [UInt8](repeating: 0, count: size)
                try bytes.withUnsafeMutableBytes { raw in
                    try check(get(program, raw.baseAddress!.assumingMemoryBound(to: CChar.self)), "nvrtcGetCUBIN(\(name))")
                }
                return KernelBinary(format: .cubin, bytes: bytes)
            }
        }
        var size = 0
        try check(nvrtcGetPTXSize(program, &size), "nvrtcGetPTXSize(\(name))")
        var bytes = [UInt8](repeating: 0, count: max(size, 1))
        try bytes.withUnsafeMutableBytes { raw in
            try check(nvrtcGetPTX(program, raw.baseAddress!.assumingMemoryBound(to: CChar.self)), "nvrtcGetPTX(\(name))")
        }
        // PTX is text; cuModuleLoadData needs its terminating NUL, which the size above includes.
        if bytes.last != 0 { bytes.append(0) }
        return KernelBinary(format: .ptx, bytes: bytes)
    }

    private func programLog(_ program: Program?) -> String {
        var size = 0
        guard nvrtcGetProgramLogSize(program, &size) == 0, size > 1 else { return "" }
        var buffer = [CChar](repeating: 0, count: size + 1)
        guard nvrtcGetProgramLog(program, &buffer) == 0 else { return "" }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}

/// Major versions of a CUDA library to try, most preferred first: the installed driver's own major version
/// first (a library newer than the driver cannot run: its CUBIN/PTX or runtime needs that driver),
/// then the others from newest to oldest.
func preferredMajorVersions(available: [Int]) -> [Int] {
    let descending = available.sorted(by: >)
    guard let driver = try? Driver.shared() else { return descending }
    let driverMajor = Int(driver.version / 1000)
    let matching = descending.filter { $0 == driverMajor }
    let older = descending.filter { $0 < driverMajor }
    let newer = descending.filter { $0 > driverMajor }
    return matching + older + newer
}
