import Glibc

/// A CBLAS implementation found at run time with `dlopen`; nothing about BLAS is needed to build.
///
/// Search order: `libopenblas.so.0`, `libopenblas.so`, `libblas.so.3`. A library counts only when it
/// exports both `cblas_sgemm` and `cblas_dgemm`; otherwise the search goes on, and with none found the
/// engine uses the Swift fallback (`CPUGEMM.fallbackName`).
struct BLASLibrary: @unchecked Sendable {
    // CBLAS enum values (cblas.h); CBLAS_INDEX arguments are 32-bit `int` in the LP64 builds that
    // distributions ship under these names.
    static let rowMajor: Int32 = 101
    static let noTrans: Int32 = 111
    static let trans: Int32 = 112

    typealias SGEMM = @convention(c) (
        Int32, Int32, Int32, Int32, Int32, Int32,
        Float, UnsafePointer<Float>, Int32, UnsafePointer<Float>, Int32,
        Float, UnsafeMutablePointer<Float>, Int32) -> Void
    typealias DGEMM = @convention(c) (
        Int32, Int32, Int32, Int32, Int32, Int32,
        Double, UnsafePointer<Double>, Int32, UnsafePointer<Double>, Int32,
        Double, UnsafeMutablePointer<Double>, Int32) -> Void

    /// The file name that `dlopen` accepted, e.g. `libopenblas.so.0`.
    let fileName: String
    /// "OpenBLAS" when the library exports OpenBLAS's own entry points, else "CBLAS".
    let vendor: String
    /// The kernel family OpenBLAS chose (`openblas_get_corename`), e.g. "SkylakeX"; nil for other BLAS.
    let coreName: String?
    let sgemm: SGEMM
    let dgemm: DGEMM

    static let searchNames = ["libopenblas.so.0", "libopenblas.so", "libblas.so.3"]

    /// The first usable library, loaded once: Swift runs a static's initializer exactly once, under a lock.
    static let shared: BLASLibrary? = {
        chooseOpenBLASCoreType()
        return searchNames.lazy.compactMap(BLASLibrary.init(fileName:)).first
    }()

    /// How the library names itself in `CPUGEMM.implementationName`.
    var description: String {
        if let coreName { return "\(vendor) (\(fileName), \(coreName) kernels)" }
        return "\(vendor) (\(fileName))"
    }

    private init?(fileName: String) {
        guard let handle = dlopen(fileName, RTLD_NOW | RTLD_LOCAL) else { return nil }
        guard let s = dlsym(handle, "cblas_sgemm"), let d = dlsym(handle, "cblas_dgemm") else {
            // A BLAS without the CBLAS layer (some reference builds) is of no use here.
            dlclose(handle)
            return nil
        }
        self.fileName = fileName
        // libblas.so.3 is often OpenBLAS behind update-alternatives; say so when it is.
        self.vendor = dlsym(handle, "openblas_get_config") != nil ? "OpenBLAS" : "CBLAS"
        typealias CoreName = @convention(c) () -> UnsafePointer<CChar>?
        if let symbol = dlsym(handle, "openblas_get_corename"),
           let name = unsafeBitCast(symbol, to: CoreName.self)() {
            self.coreName = String(cString: name)
        } else {
            self.coreName = nil
        }
        self.sgemm = unsafeBitCast(s, to: SGEMM.self)
        self.dgemm = unsafeBitCast(d, to: DGEMM.self)
        // The handle stays open for the life of the process: the function pointers point into it.
    }

    /// OpenBLAS picks its kernels from CPUID once, when it is loaded. Under some hypervisors it does
    /// not recognize the CPU and falls back to its SSE3 "Prescott" kernels: on the 2-core AVX-512
    /// development VM that gave 65 GFLOP/s for a 1024³ sgemm against 300 with "SkylakeX" kernels.
    /// So, on a virtual machine only (bare metal is detected well), before OpenBLAS is loaded and
    /// only if the user has not set `OPENBLAS_CORETYPE`, name the kernels the kernel's CPU flags
    /// allow. sgemm/dgemm use the same kernels in the newer families, so little is lost when
    /// OpenBLAS would have known better.
    private static func chooseOpenBLASCoreType() {
        guard getenv("OPENBLAS_CORETYPE") == nil else { return }
        for name in searchNames where dlopen(name, RTLD_LAZY | RTLD_NOLOAD) != nil {
            return  // already loaded: its choice is made (the NOLOAD handle's reference is harmless)
        }
        guard let flags = cpuFlags(), flags.contains("hypervisor") else { return }
        let core: String
        if ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"].allSatisfy(flags.contains) {
            core = "SkylakeX"
        } else if ["avx2", "fma"].allSatisfy(flags.contains) {
            core = "Haswell"
        } else {
            return
        }
        setenv("OPENBLAS_CORETYPE", core, 0)
    }

    /// The CPU feature flags of the first processor in `/proc/cpuinfo`, or nil where there is none.
    private static func cpuFlags() -> Set<Substring>? {
        guard let file = fopen("/proc/cpuinfo", "r") else { return nil }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0, let line {
            let text = String(cString: line)
            if text.hasPrefix("flags") {
                guard let colon = text.firstIndex(of: ":") else { return nil }
                return Set(text[text.index(after: colon)...].split(whereSeparator: { $0 == " " || $0 == "\n" }))
            }
        }
        return nil
    }
}
