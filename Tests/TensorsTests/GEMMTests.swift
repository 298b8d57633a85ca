import TestSupport
import Testing
@testable import Tensors

// Every case runs on both implementations: the BLAS found at run time (skipped where none is
// installed) and the Swift fallback forced with `CPUGEMM.forceFallback`. The suite is serialized
// because that switch is process-wide. References are naive triple loops in Double.

/// Which implementation a case runs on.
enum GEMMPath: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case blas, fallback
    var testDescription: String { rawValue }

    /// Runs `body` with this path selected; returns false (running nothing) when BLAS is asked
    /// for but not installed.
    @discardableResult
    func run(_ body: () throws -> Void) rethrows -> Bool {
        if self == .blas && !CPUGEMM.blasAvailable { return false }
        let saved = CPUGEMM.forceFallback
        CPUGEMM.forceFallback = (self == .fallback)
        defer { CPUGEMM.forceFallback = saved }
        try body()
        return true
    }
}

/// Float and Double behind one generic test body.
protocol GEMMTestScalar: CPUGEMMScalar {
    /// Relative tolerance of one output element against its error scale.
    static func tolerance(k: Int) -> Double
    static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Self,
                     a: UnsafePointer<Self>, lda: Int, b: UnsafePointer<Self>, ldb: Int,
                     beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int)
    static func gemmBatched(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Self,
                            a: UnsafePointer<Self>, lda: Int, strideA: Int,
                            b: UnsafePointer<Self>, ldb: Int, strideB: Int,
                            beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int, strideC: Int, batch: Int)
}

extension Float: GEMMTestScalar {
    static func tolerance(k: Int) -> Double { 1e-5 * Double(max(k, 1)).squareRoot() }
    static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        CPUGEMM.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                     b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }
    static func gemmBatched(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<Float>, lda: Int, strideA: Int,
                            b: UnsafePointer<Float>, ldb: Int, strideB: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, strideC: Int, batch: Int) {
        CPUGEMM.gemmBatched(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                            a: a, lda: lda, strideA: strideA, b: b, ldb: ldb, strideB: strideB,
                            beta: beta, c: c, ldc: ldc, strideC: strideC, batch: batch)
    }
}

extension Double: GEMMTestScalar {
    static func tolerance(k: Int) -> Double { 1e-12 }
    static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double,
                     a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
                     beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int) {
        CPUGEMM.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                     b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }
    static func gemmBatched(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double,
                            a: UnsafePointer<Double>, lda: Int, strideA: Int,
                            b: UnsafePointer<Double>, ldb: Int, strideB: Int,
                            beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int, strideC: Int, batch: Int) {
        CPUGEMM.gemmBatched(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                            a: a, lda: lda, strideA: strideA, b: b, ldb: ldb, strideB: strideB,
                            beta: beta, c: c, ldc: ldc, strideC: strideC, batch: batch)
    }
}

/// One GEMM problem, its operands stored with `pad` extra elements at the end of every row so that
/// strides exceed the logical widths when asked.
struct GEMMCase: Sendable, CustomTestStringConvertible {
    var m: Int, n: Int, k: Int
    var transA = false, transB = false
    var alpha = 1.5, beta = -0.75
    var padA = 0, padB = 0, padC = 0

    var testDescription: String {
        "\(m)x\(n)x\(k) \(transA ? "T" : "N")\(transB ? "T" : "N") pad \(padA),\(padB),\(padC)"
    }
    var aRows: Int { transA ? k : m }
    var aCols: Int { transA ? m : k }
    var bRows: Int { transB ? n : k }
    var bCols: Int { transB ? k : n }
    var lda: Int { aCols + padA }
    var ldb: Int { bCols + padB }
    var ldc: Int { n + padC }

    /// Element (i, p) of op(A) and (p, j) of op(B) in their stored buffers.
    func aIndex(_ i: Int, _ p: Int) -> Int { transA ? p * lda + i : i * lda + p }
    func bIndex(_ p: Int, _ j: Int) -> Int { transB ? j * ldb + p : p * ldb + j }

    /// The naive product, and per element the error scale `|alpha| Σ|a||b| + |beta c|`.
    func reference(a: [Double], b: [Double], c: [Double]) -> (value: [Double], scale: [Double]) {
        var value = c, scale = c
        for i in 0..<m {
            for j in 0..<n {
                var sum = 0.0, abs = 0.0
                for p in 0..<k {
                    let x = a[aIndex(i, p)] * b[bIndex(p, j)]
                    sum += x
                    abs += Swift.abs(x)
                }
                let old = c[i * ldc + j]
                // beta == 0 ignores C entirely (NaN included), as BLAS specifies.
                let kept = beta == 0 ? 0 : beta * old
                value[i * ldc + j] = alpha * sum + kept
                scale[i * ldc + j] = Swift.abs(alpha) * abs + Swift.abs(kept)
            }
        }
        return (value, scale)
    }
}

/// Sentinel written into row padding of C: it must come back untouched.
let padSentinel = 12345.0

/// Runs `problem` in `T` and checks every element of C (padding included) against the reference.
func checkGEMM<T: GEMMTestScalar>(_ problem: GEMMCase, as _: T.Type, seed: UInt64 = 1, poisonC: Bool = false) {
    var random = SplitMix64(state: seed)
    // Round the inputs to T first, so the reference multiplies exactly what the GEMM sees.
    let a = random.values(problem.aRows * problem.lda).map { Double(T($0)) }
    let b = random.values(problem.bRows * problem.ldb).map { Double(T($0)) }
    var c0 = random.values(problem.m * problem.ldc).map { Double(T($0)) }
    for i in 0..<problem.m {
        for j in problem.n..<problem.ldc { c0[i * problem.ldc + j] = padSentinel }
        if poisonC { for j in 0..<problem.n { c0[i * problem.ldc + j] = .nan } }
    }
    let expected = problem.reference(a: a, b: b, c: c0)

    let aT = a.map { T($0) }, bT = b.map { T($0) }
    var cT = c0.map { T($0) }
    T.gemm(transA: problem.transA, transB: problem.transB, m: problem.m, n: problem.n, k: problem.k,
           alpha: T(problem.alpha), a: aT, lda: problem.lda, b: bT, ldb: problem.ldb,
           beta: T(problem.beta), c: &cT, ldc: problem.ldc)
    expectClose(cT, expected, problem: problem, tolerance: T.tolerance(k: problem.k))
}

func expectClose<T: BinaryFloatingPoint>(_ actual: [T], _ expected: (value: [Double], scale: [Double]),
                                         problem: GEMMCase, tolerance: Double,
                                         sourceLocation: SourceLocation = #_sourceLocation) {
    var worst = 0.0, worstIndex = 0, bad = 0
    for i in 0..<actual.count {
        let col = i % problem.ldc
        if col >= problem.n {
            if Double(actual[i]) != padSentinel { bad += 1; worstIndex = i; worst = .infinity }
            continue
        }
        let error = Swift.abs(Double(actual[i]) - expected.value[i]) / max(expected.scale[i], 1e-30)
        if !(error <= tolerance) { bad += 1 }
        if !(error <= worst) { worst = error; worstIndex = i }
    }
    #expect(bad == 0, """
        \(problem.testDescription): \(bad) bad elements; worst relative error \(worst) at \
        (\(worstIndex / problem.ldc), \(worstIndex % problem.ldc)): got \(actual[worstIndex]), \
        want \(expected.value[worstIndex]) (tolerance \(tolerance))
        """, sourceLocation: sourceLocation)
}

/// The sizes of the brief, plus ones that cross the fallback's block edges (kc = 256, mc = 192
/// Float / 96 Double, nc = 4096 Float) and split by columns across threads (n > m).
let gemmShapes: [(Int, Int, Int)] = [
    (1, 1, 1), (7, 13, 5), (33, 65, 17), (130, 70, 129),
    (200, 40, 300), (9, 300, 100), (3, 4200, 2),
]

let allTransposes: [(Bool, Bool)] = [(false, false), (false, true), (true, false), (true, true)]

/// Every shape × every transpose pair.
let gemmCases: [GEMMCase] = gemmShapes.flatMap { m, n, k in
    allTransposes.map { GEMMCase(m: m, n: n, k: k, transA: $0.0, transB: $0.1) }
}

@Suite(.serialized)
struct GEMMTests {
    @Test(arguments: GEMMPath.allCases, gemmCases)
    func floatMatchesNaiveProduct(path: GEMMPath, problem: GEMMCase) {
        path.run { checkGEMM(problem, as: Float.self) }
    }

    @Test(arguments: GEMMPath.allCases, gemmCases)
    func doubleMatchesNaiveProduct(path: GEMMPath, problem: GEMMCase) {
        path.run { checkGEMM(problem, as: Double.self) }
    }

    @Test(arguments: GEMMPath.allCases, allTransposes.map { GEMMCase(m: 33, n: 65, k: 17, transA: $0.0, transB: $0.1) })
    func stridesWiderThanRowsLeavePaddingAlone(path: GEMMPath, base: GEMMCase) {
        var problem = base
        (problem.padA, problem.padB, problem.padC) = (3, 5, 7)
        path.run {
            checkGEMM(problem, as: Float.self, seed: 2)
            checkGEMM(problem, as: Double.self, seed: 3)
        }
    }

    @Test(arguments: GEMMPath.allCases, allTransposes)
    func betaZeroOverwritesNaN(path: GEMMPath, transposes: (Bool, Bool)) {
        for (m, n, k) in [(7, 13, 5), (130, 70, 129)] {
            var problem = GEMMCase(m: m, n: n, k: k, transA: transposes.0, transB: transposes.1)
            problem.beta = 0
            problem.padC = 2
            path.run {
                checkGEMM(problem, as: Float.self, seed: 4, poisonC: true)
                checkGEMM(problem, as: Double.self, seed: 5, poisonC: true)
            }
        }
    }

    @Test(arguments: GEMMPath.allCases)
    func emptyDepthOrZeroAlphaOnlyScalesC(path: GEMMPath) {
        var zeroK = GEMMCase(m: 5, n: 6, k: 0)
        zeroK.padC = 1
        var zeroAlpha = GEMMCase(m: 5, n: 6, k: 4)
        zeroAlpha.alpha = 0
        var zeroBoth = GEMMCase(m: 5, n: 6, k: 0)
        zeroBoth.beta = 0
        path.run {
            for problem in [zeroK, zeroAlpha, zeroBoth] {
                checkGEMM(problem, as: Float.self, seed: 6)
                checkGEMM(problem, as: Double.self, seed: 7, poisonC: problem.beta == 0)
            }
        }
    }

    @Test(arguments: GEMMPath.allCases)
    func implementationNameNamesThePath(path: GEMMPath) {
        path.run {
            let name = CPUGEMM.implementationName
            if path == .fallback {
                #expect(name == "Swift blocked SIMD fallback (\(CPUGEMM.threadCount) thread\(CPUGEMM.threadCount == 1 ? "" : "s"))")
            } else {
                #expect(BLASLibrary.searchNames.contains { name.contains("(\($0)") }, "\(name)")
            }
        }
    }

    /// Batches of small products (split across threads product by product on the fallback) and of
    /// large ones (each split by rows; 130³ is past `CPUGEMM.batchParallelThreshold`), with A or B
    /// broadcast by a stride of 0.
    @Test(arguments: GEMMPath.allCases, [
        BatchedCase(problem: GEMMCase(m: 7, n: 13, k: 5, transA: false, transB: true), batch: 5, broadcastA: true),
        BatchedCase(problem: GEMMCase(m: 33, n: 65, k: 17, transA: true, transB: false), batch: 5, broadcastB: true),
        BatchedCase(problem: GEMMCase(m: 130, n: 70, k: 129), batch: 3),
        BatchedCase(problem: GEMMCase(m: 130, n: 130, k: 130, transA: true, transB: true), batch: 2, broadcastA: true),
    ])
    func batchedMatchesProductByProduct(path: GEMMPath, setup: BatchedCase) {
        path.run {
            checkBatched(setup, as: Float.self)
            checkBatched(setup, as: Double.self)
        }
    }
}

struct BatchedCase: Sendable, CustomTestStringConvertible {
    var problem: GEMMCase
    var batch: Int
    var broadcastA = false, broadcastB = false
    var testDescription: String {
        "\(batch) × \(problem.testDescription)\(broadcastA ? ", A broadcast" : "")\(broadcastB ? ", B broadcast" : "")"
    }
}

/// A batch with the given operands broadcast and rows padded, checked product by product.
func checkBatched<T: GEMMTestScalar>(_ setup: BatchedCase, as _: T.Type) {
    var problem = setup.problem
    problem.padA = 1; problem.padB = 2; problem.padC = 3
    let (batch, broadcastA, broadcastB) = (setup.batch, setup.broadcastA, setup.broadcastB)
    // Matrices sit a few elements apart so a wrong stride reads a neighbor's data.
    let sizeA = problem.aRows * problem.lda + 4, sizeB = problem.bRows * problem.ldb + 4
    let sizeC = problem.m * problem.ldc + 4
    let strideA = broadcastA ? 0 : sizeA, strideB = broadcastB ? 0 : sizeB
    var random = SplitMix64(state: 8)
    let a = random.values(broadcastA ? sizeA : sizeA * batch).map { Double(T($0)) }
    let b = random.values(broadcastB ? sizeB : sizeB * batch).map { Double(T($0)) }
    var c0 = random.values(sizeC * batch).map { Double(T($0)) }
    for index in c0.indices where (index % sizeC) >= problem.m * problem.ldc
        || (index % sizeC) % problem.ldc >= problem.n {
        c0[index] = padSentinel
    }
    let aT = a.map { T($0) }, bT = b.map { T($0) }
    var cT = c0.map { T($0) }
    T.gemmBatched(transA: problem.transA, transB: problem.transB, m: problem.m, n: problem.n, k: problem.k,
                  alpha: T(problem.alpha), a: aT, lda: problem.lda, strideA: strideA,
                  b: bT, ldb: problem.ldb, strideB: strideB,
                  beta: T(problem.beta), c: &cT, ldc: problem.ldc, strideC: sizeC, batch: batch)
    for i in 0..<batch {
        let ai = Array(a[(i * strideA)...].prefix(sizeA)), bi = Array(b[(i * strideB)...].prefix(sizeB))
        let ci = Array(c0[(i * sizeC)..<(i * sizeC + problem.m * problem.ldc)])
        let expected = problem.reference(a: ai, b: bi, c: ci)
        let got = Array(cT[(i * sizeC)..<(i * sizeC + problem.m * problem.ldc)])
        expectClose(got, expected, problem: problem, tolerance: T.tolerance(k: problem.k))
        // The gap after each C must be untouched too.
        #expect(cT[(i * sizeC + problem.m * problem.ldc)..<((i + 1) * sizeC)].allSatisfy { Double($0) == padSentinel })
    }
}
