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
    let sgemm: SGEMM
    let dgemm: DGEMM

    static let searchNames = ["libopenblas.so.0", "libopenblas.so", "libblas.so.3"]

    /// The first usable library, loaded once: Swift runs a static's initializer exactly once, under a lock.
    static let shared: BLASLibrary? = searchNames.lazy.compactMap(BLASLibrary.init(fileName:)).first

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
        self.sgemm = unsafeBitCast(s, to: SGEMM.self)
        self.dgemm = unsafeBitCast(d, to: DGEMM.self)
        // The handle stays open for the life of the process: the function pointers point into it.
    }
}
