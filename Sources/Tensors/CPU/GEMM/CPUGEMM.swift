import Dispatch
import Glibc
import Synchronization

/// Dense matrix multiply on the CPU: a system BLAS when one is installed, else a blocked SIMD
/// Swift implementation.
///
/// All matrices are row-major; `lda`/`ldb`/`ldc` are row strides in elements, so a sub-matrix view
/// is a base pointer plus its parent's stride.
///
/// ```swift
/// // C[2,2] = A[2,3] · B[3,2]
/// let a: [Float] = [1, 2, 3, 4, 5, 6], b: [Float] = [1, 0, 0, 1, 1, 1]
/// var c = [Float](repeating: 0, count: 4)
/// CPUGEMM.gemm(transA: false, transB: false, m: 2, n: 2, k: 3, alpha: 1, a: a, lda: 3,
///              b: b, ldb: 2, beta: 0, c: &c, ldc: 2)   // c == [4, 5, 10, 11]
/// print(CPUGEMM.implementationName)   // "OpenBLAS (libopenblas.so.0, SkylakeX kernels)"
/// ```
public enum CPUGEMM {
    // MARK: Which implementation runs

    /// When set, every call uses the Swift fallback even if a BLAS library was found
    /// (for benchmarks and for testing the fallback). Safe to set from any thread; calls already
    /// running finish on the implementation they started with.
    public static var forceFallback: Bool {
        get { forceFallbackFlag.load(ordering: .relaxed) }
        set { forceFallbackFlag.store(newValue, ordering: .relaxed) }
    }

    /// The implementation that calls made now would use, for `fastmoe info` and benchmark reports:
    /// e.g. `"OpenBLAS (libopenblas.so.0, SkylakeX kernels)"` or `"Swift blocked SIMD fallback (2 threads)"`.
    public static var implementationName: String {
        if let blas = activeBLAS { return blas.description }
        return fallbackName
    }

    /// The name of the Swift implementation, whether or not it is the active one.
    static var fallbackName: String {
        "Swift blocked SIMD fallback (\(threadCount) thread\(threadCount == 1 ? "" : "s"))"
    }

    /// Whether a BLAS library was found (independent of `forceFallback`).
    static var blasAvailable: Bool { BLASLibrary.shared != nil }

    /// Threads the fallback splits a large product over: the backend's worker count.
    static var threadCount: Int { CPUBackend.threadCount }

    private static let forceFallbackFlag = Atomic<Bool>(false)

    private static var activeBLAS: BLASLibrary? {
        forceFallback ? nil : BLASLibrary.shared
    }

    // MARK: Single products

    /// Row-major `C = alpha * op(A) * op(B) + beta * C`, `op` the transpose when the flag is set.
    ///
    /// A is `[m,k]` (or `[k,m]` when `transA`), B is `[k,n]` (or `[n,k]` when `transB`), C is `[m,n]`;
    /// `lda`/`ldb`/`ldc` are row strides in elements. `beta == 0` overwrites C (NaN in C does not
    /// survive); `k == 0` or `alpha == 0` gives `C = beta * C` without reading A or B.
    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        product(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                b: b, ldb: ldb, beta: beta, c: c, ldc: ldc, blas: activeBLAS, threads: threadCount)
    }

    /// Row-major `C = alpha * op(A) * op(B) + beta * C` in Double; see the Float overload.
    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double,
                            a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
                            beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int) {
        product(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                b: b, ldb: ldb, beta: beta, c: c, ldc: ldc, blas: activeBLAS, threads: threadCount)
    }

    // MARK: Batched products

    /// `batch` independent products `C_i = alpha * op(A_i) * op(B_i) + beta * C_i`, where
    /// `A_i = a + i * strideA` (likewise B, C). A stride of 0 broadcasts one matrix to every product;
    /// `strideC` may be 0 only when `batch <= 1`, since products would race on one output.
    static func gemmBatched(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<Float>, lda: Int, strideA: Int,
                            b: UnsafePointer<Float>, ldb: Int, strideB: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, strideC: Int, batch: Int) {
        let blas = activeBLAS
        batched(m: m, n: n, k: k, strideC: strideC, batch: batch, useBLAS: blas != nil) { i, threads in
            product(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                    a: a + i * strideA, lda: lda, b: b + i * strideB, ldb: ldb,
                    beta: beta, c: c + i * strideC, ldc: ldc, blas: blas, threads: threads)
        }
    }

    /// Batched Double products; see the Float overload.
    static func gemmBatched(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double,
                            a: UnsafePointer<Double>, lda: Int, strideA: Int,
                            b: UnsafePointer<Double>, ldb: Int, strideB: Int,
                            beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int, strideC: Int, batch: Int) {
        let blas = activeBLAS
        batched(m: m, n: n, k: k, strideC: strideC, batch: batch, useBLAS: blas != nil) { i, threads in
            product(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                    a: a + i * strideA, lda: lda, b: b + i * strideB, ldb: ldb,
                    beta: beta, c: c + i * strideC, ldc: ldc, blas: blas, threads: threads)
        }
    }
}

// MARK: - Shared plumbing

/// What differs between the Float and Double paths: the BLAS entry point and the micro-kernel.
protocol CPUGEMMScalar: BinaryFloatingPoint, Sendable {
    associatedtype Kernel: GEMMMicroKernel where Kernel.Scalar == Self
    static func blasGEMM(_ blas: BLASLibrary, _ transA: Int32, _ transB: Int32, _ m: Int32, _ n: Int32, _ k: Int32,
                         _ alpha: Self, _ a: UnsafePointer<Self>, _ lda: Int32, _ b: UnsafePointer<Self>, _ ldb: Int32,
                         _ beta: Self, _ c: UnsafeMutablePointer<Self>, _ ldc: Int32)
}

extension Float: CPUGEMMScalar {
    typealias Kernel = FloatKernel4x16
    static func blasGEMM(_ blas: BLASLibrary, _ transA: Int32, _ transB: Int32, _ m: Int32, _ n: Int32, _ k: Int32,
                         _ alpha: Float, _ a: UnsafePointer<Float>, _ lda: Int32, _ b: UnsafePointer<Float>, _ ldb: Int32,
                         _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int32) {
        blas.sgemm(BLASLibrary.rowMajor, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    }
}

extension Double: CPUGEMMScalar {
    typealias Kernel = DoubleKernel4x8
    static func blasGEMM(_ blas: BLASLibrary, _ transA: Int32, _ transB: Int32, _ m: Int32, _ n: Int32, _ k: Int32,
                         _ alpha: Double, _ a: UnsafePointer<Double>, _ lda: Int32, _ b: UnsafePointer<Double>, _ ldb: Int32,
                         _ beta: Double, _ c: UnsafeMutablePointer<Double>, _ ldc: Int32) {
        blas.dgemm(BLASLibrary.rowMajor, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    }
}

extension CPUGEMM {
    /// Below this many multiply-adds per product, a batch is split across threads product by
    /// product (each single-threaded) instead of splitting each product.
    static var batchParallelThreshold: Int { 128 * 128 * 128 }

    /// One product on `blas` when given (and the sizes fit its 32-bit arguments), else on the
    /// fallback with up to `threads` threads.
    static func product<S: CPUGEMMScalar>(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: S,
        a: UnsafePointer<S>, lda: Int, b: UnsafePointer<S>, ldb: Int,
        beta: S, c: UnsafeMutablePointer<S>, ldc: Int, blas: BLASLibrary?, threads: Int
    ) {
        guarantee(m >= 0 && n >= 0 && k >= 0, "CPUGEMM: negative size m=\(m) n=\(n) k=\(k)")
        checkStride(lda, rows: transA ? k : m, cols: transA ? m : k, name: "lda")
        checkStride(ldb, rows: transB ? n : k, cols: transB ? k : n, name: "ldb")
        checkStride(ldc, rows: m, cols: n, name: "ldc")
        if m == 0 || n == 0 { return }
        let output = GEMMOutput(base: c, ld: ldc)
        if k == 0 || alpha == 0 {
            // BLAS would do the same, but would also insist on lda >= k >= 1 for an A it never reads.
            output.scale(rows: m, cols: n, by: beta)
            return
        }
        if let blas, let dims = blasInt32(m, n, k),
           let lda32 = blasInt32(stride: lda, rows: transA ? k : m, cols: transA ? m : k),
           let ldb32 = blasInt32(stride: ldb, rows: transB ? n : k, cols: transB ? k : n),
           let ldc32 = blasInt32(stride: ldc, rows: m, cols: n) {
            S.blasGEMM(blas, transA ? BLASLibrary.trans : BLASLibrary.noTrans,
                       transB ? BLASLibrary.trans : BLASLibrary.noTrans,
                       dims.0, dims.1, dims.2, alpha, a, lda32, b, ldb32, beta, c, ldc32)
            return
        }
        BlockedGEMM<S.Kernel>.run(
            m: m, n: n, k: k, alpha: alpha,
            a: GEMMOperand(base: a, ld: lda, transposed: transA),
            b: GEMMOperand(base: b, ld: ldb, transposed: transB),
            beta: beta, c: output, threads: threads)
    }

    /// Runs `body(i, threads)` for every product of a batch.
    ///
    /// With BLAS the products run one after another and BLAS threads each one: concurrent calls
    /// into a threaded OpenBLAS contend for its one thread pool. The fallback splits a batch of
    /// small products across threads, each product on one thread.
    static func batched(m: Int, n: Int, k: Int, strideC: Int, batch: Int, useBLAS: Bool,
                        body: (Int, Int) -> Void) {
        guarantee(batch >= 0, "CPUGEMM: negative batch \(batch)")
        guarantee(strideC != 0 || batch <= 1, "CPUGEMM: strideC == 0 with batch \(batch) would write every product to one C")
        if batch == 0 || m == 0 || n == 0 { return }
        let work = m.multipliedReportingOverflow(by: n).partialValue.multipliedReportingOverflow(by: k)
        let small = !work.overflow && work.partialValue < batchParallelThreshold
        if useBLAS || !small || batch == 1 || threadCount == 1 {
            for i in 0..<batch { body(i, threadCount) }
            return
        }
        let parts = min(batch, threadCount)
        withoutActuallyEscaping(body) { body in
            let shared = UncheckedSendableBox(body)
            DispatchQueue.concurrentPerform(iterations: parts) { part in
                var i = part
                while i < batch {
                    shared.value(i, 1)
                    i += parts
                }
            }
        }
    }

    private static func checkStride(_ ld: Int, rows: Int, cols: Int, name: String) {
        guarantee(rows <= 1 || cols == 0 || ld >= cols,
                     "CPUGEMM: \(name)=\(ld) is smaller than the row width \(cols)")
    }

    private static func blasInt32(_ m: Int, _ n: Int, _ k: Int) -> (Int32, Int32, Int32)? {
        guard let m32 = Int32(exactly: m), let n32 = Int32(exactly: n), let k32 = Int32(exactly: k) else { return nil }
        return (m32, n32, k32)
    }

    /// BLAS rejects (with a message, and no product) a leading dimension below `max(1, cols)` even
    /// where it is never used, i.e. for a matrix of one row; give it a value it accepts there.
    private static func blasInt32(stride: Int, rows: Int, cols: Int) -> Int32? {
        Int32(exactly: rows <= 1 ? max(stride, cols, 1) : max(stride, 1))
    }
}

/// Carries a value the caller knows is safe to share into `concurrentPerform`.
private struct UncheckedSendableBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
