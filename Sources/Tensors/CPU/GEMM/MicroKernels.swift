/// One register-tiled micro-kernel and the cache blocking that feeds it.
///
/// The kernel computes `C[0..<mr, 0..<nr] += alpha * Â · B̂` where `Â` is a packed panel of `mr` rows
/// (`kc` steps of `mr` values) and `B̂` a packed panel of `nr` columns (`kc` steps of `nr` values).
/// Packed panels are zero-padded, so the kernel always runs a full tile; `BlockedGEMM` routes
/// partial tiles through a scratch tile.
protocol GEMMMicroKernel: SendableMetatype {
    associatedtype Scalar: BinaryFloatingPoint & Sendable
    /// Rows of the register tile.
    static var mr: Int { get }
    /// Columns of the register tile.
    static var nr: Int { get }
    /// Depth of one packed block: an `nr`-wide panel of B (`kc * nr` scalars) should sit in L1.
    static var kc: Int { get }
    /// Rows of one packed block of A (a multiple of `mr`): `mc * kc` scalars should sit in L2.
    static var mc: Int { get }
    /// Columns of one packed block of B (a multiple of `nr`): `kc * nc` scalars live in L3.
    static var nc: Int { get }
    static func kernel(kc: Int, a: UnsafePointer<Scalar>, b: UnsafePointer<Scalar>,
                       c: UnsafeMutablePointer<Scalar>, ldc: Int, alpha: Scalar)
}

// Accumulation is written `acc += x * y`, not `addingProduct`: without `-target-cpu` the compiler
// targets baseline x86-64, where `addingProduct` becomes one `fmaf` library call per lane (0.8 against
// 25 GFLOP/s for this kernel on the development VM), while `*` and `+` become packed SSE. Built for a
// CPU with FMA, fusing could at most double the kernel's rate, so the portable form is the safe one.
// Built with `-Xswiftc -target-cpu -Xswiftc native` the same code uses AVX-512 registers (about 2.2×
// the baseline build's 1024³ rate on that VM); the package does not set that flag.

@inline(__always)
private func load<V: SIMD>(_ p: UnsafePointer<V.Scalar>, as _: V.Type) -> V {
    UnsafeRawPointer(p).loadUnaligned(as: V.self)
}

@inline(__always)
private func store<V: SIMD>(_ v: V, _ p: UnsafeMutablePointer<V.Scalar>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
}

/// Float: 4 rows × 16 columns, each row two `SIMD8<Float>` accumulators.
///
/// Measured against 6×8 and 6×16 on a Xeon (AVX-512 capable) in a baseline build: all ran at the
/// SSE mul+add ceiling (~26 GFLOP/s/core); built with `-target-cpu native`, 4×16 was fastest.
enum FloatKernel4x16: GEMMMicroKernel {
    typealias Scalar = Float
    static var mr: Int { 4 }
    static var nr: Int { 16 }
    static var kc: Int { 256 }
    static var mc: Int { 192 }
    static var nc: Int { 4096 }

    @inline(__always)
    static func kernel(kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                       c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float) {
        typealias V = SIMD8<Float>
        var c00 = V(), c01 = V(), c10 = V(), c11 = V()
        var c20 = V(), c21 = V(), c30 = V(), c31 = V()
        var pa = a, pb = b
        for _ in 0..<kc {
            let b0 = load(pb, as: V.self), b1 = load(pb + 8, as: V.self)
            var x = V(repeating: pa[0]); c00 += x * b0; c01 += x * b1
            x = V(repeating: pa[1]); c10 += x * b0; c11 += x * b1
            x = V(repeating: pa[2]); c20 += x * b0; c21 += x * b1
            x = V(repeating: pa[3]); c30 += x * b0; c31 += x * b1
            pa += 4; pb += 16
        }
        let s = V(repeating: alpha)
        var r = c
        store(load(r, as: V.self) + s * c00, r); store(load(r + 8, as: V.self) + s * c01, r + 8); r += ldc
        store(load(r, as: V.self) + s * c10, r); store(load(r + 8, as: V.self) + s * c11, r + 8); r += ldc
        store(load(r, as: V.self) + s * c20, r); store(load(r + 8, as: V.self) + s * c21, r + 8); r += ldc
        store(load(r, as: V.self) + s * c30, r); store(load(r + 8, as: V.self) + s * c31, r + 8)
    }
}

/// Double: 4 rows × 8 columns, each row two `SIMD4<Double>` accumulators (same register budget
/// as the Float kernel).
enum DoubleKernel4x8: GEMMMicroKernel {
    typealias Scalar = Double
    static var mr: Int { 4 }
    static var nr: Int { 8 }
    static var kc: Int { 256 }
    static var mc: Int { 96 }
    static var nc: Int { 2048 }

    @inline(__always)
    static func kernel(kc: Int, a: UnsafePointer<Double>, b: UnsafePointer<Double>,
                       c: UnsafeMutablePointer<Double>, ldc: Int, alpha: Double) {
        typealias V = SIMD4<Double>
        var c00 = V(), c01 = V(), c10 = V(), c11 = V()
        var c20 = V(), c21 = V(), c30 = V(), c31 = V()
        var pa = a, pb = b
        for _ in 0..<kc {
            let b0 = load(pb, as: V.self), b1 = load(pb + 4, as: V.self)
            var x = V(repeating: pa[0]); c00 += x * b0; c01 += x * b1
            x = V(repeating: pa[1]); c10 += x * b0; c11 += x * b1
            x = V(repeating: pa[2]); c20 += x * b0; c21 += x * b1
            x = V(repeating: pa[3]); c30 += x * b0; c31 += x * b1
            pa += 4; pb += 8
        }
        let s = V(repeating: alpha)
        var r = c
        store(load(r, as: V.self) + s * c00, r); store(load(r + 4, as: V.self) + s * c01, r + 4); r += ldc
        store(load(r, as: V.self) + s * c10, r); store(load(r + 4, as: V.self) + s * c11, r + 4); r += ldc
        store(load(r, as: V.self) + s * c20, r); store(load(r + 4, as: V.self) + s * c21, r + 4); r += ldc
        store(load(r, as: V.self) + s * c30, r); store(load(r + 4, as: V.self) + s * c31, r + 4)
    }
}
