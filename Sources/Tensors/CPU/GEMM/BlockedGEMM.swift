import Dispatch

/// The Swift fallback GEMM: Goto-style cache blocking around a register-tiled micro-kernel.
///
/// Loop nest (shapes for `C[m,n] += alpha * op(A)[m,k] · op(B)[k,n]`):
/// ```
/// for jc in 0..<n by nc            // B block of kc × nc, packed into nr-wide panels (L3)
///   for pc in 0..<k by kc
///     pack B[pc..., jc...]
///     for ic in 0..<m by mc        // A block of mc × kc, packed into mr-tall panels (L2)
///       pack A[ic..., pc...]
///       for each nr panel, for each mr panel: micro-kernel (kc steps, registers)
/// ```
/// Packing absorbs the transposes and strides, and pads edge panels with zeros, so the micro-kernel
/// has one shape and contiguous inputs whatever the operands look like.
enum BlockedGEMM<K: GEMMMicroKernel> {
    typealias Scalar = K.Scalar

    /// Below this many multiply-adds (`m*n*k`), a product runs on the calling thread: splitting
    /// costs more than it saves (64³ is ~20 µs of work on one core).
    static var parallelThreshold: Int { 64 * 64 * 64 }

    /// `C = alpha * op(A) · op(B) + beta * C`, split over up to `threads` threads by rows of C (or by
    /// columns when C is wider than tall). Each part packs its own panels, so parts share nothing.
    static func run(m: Int, n: Int, k: Int, alpha: Scalar, a: GEMMOperand<Scalar>, b: GEMMOperand<Scalar>,
                    beta: Scalar, c: GEMMOutput<Scalar>, threads: Int) {
        if m == 0 || n == 0 { return }
        let work = m.multipliedReportingOverflow(by: n).partialValue.multipliedReportingOverflow(by: k)
        guard threads > 1, work.overflow || work.partialValue >= parallelThreshold else {
            runSerial(m: m, n: n, k: k, alpha: alpha, a: a, b: b, beta: beta, c: c)
            return
        }
        // Split the longer side, in whole register tiles, into one part per thread.
        let byRows = m >= n
        let (extent, tile) = byRows ? (m, K.mr) : (n, K.nr)
        let tiles = (extent + tile - 1) / tile
        let parts = min(threads, tiles)
        if parts <= 1 {
            runSerial(m: m, n: n, k: k, alpha: alpha, a: a, b: b, beta: beta, c: c)
            return
        }
        let tilesPerPart = (tiles + parts - 1) / parts
        let span = tilesPerPart * tile
        let count = (extent + span - 1) / span
        DispatchQueue.concurrentPerform(iterations: count) { part in
            let start = part * span
            let size = min(span, extent - start)
            if byRows {
                runSerial(m: size, n: n, k: k, alpha: alpha, a: a.advanced(row: start, col: 0), b: b,
                          beta: beta, c: c.advanced(row: start, col: 0))
            } else {
                runSerial(m: m, n: size, k: k, alpha: alpha, a: a, b: b.advanced(row: 0, col: start),
                          beta: beta, c: c.advanced(row: 0, col: start))
            }
        }
    }

    /// The whole product on the calling thread.
    static func runSerial(m: Int, n: Int, k: Int, alpha: Scalar, a: GEMMOperand<Scalar>, b: GEMMOperand<Scalar>,
                          beta: Scalar, c: GEMMOutput<Scalar>) {
        if m == 0 || n == 0 { return }
        // Scaling C once up front lets every depth block simply accumulate into it.
        c.scale(rows: m, cols: n, by: beta)
        if k == 0 || alpha == 0 { return }

        let mr = K.mr, nr = K.nr
        // Buffers sized to the problem, not the block, so small products allocate little.
        let kcMax = min(K.kc, k)
        let mcMax = min(K.mc, roundUp(m, mr))
        let ncMax = min(K.nc, roundUp(n, nr))
        // 64-byte alignment keeps each packed SIMD row on one cache line.
        let packedA = UnsafeMutableRawPointer.allocate(
            byteCount: mcMax * kcMax * MemoryLayout<Scalar>.stride, alignment: 64).bindMemory(to: Scalar.self, capacity: mcMax * kcMax)
        let packedB = UnsafeMutableRawPointer.allocate(
            byteCount: kcMax * ncMax * MemoryLayout<Scalar>.stride, alignment: 64).bindMemory(to: Scalar.self, capacity: kcMax * ncMax)
        let edge = UnsafeMutablePointer<Scalar>.allocate(capacity: mr * nr)
        defer {
            UnsafeMutableRawPointer(packedA).deallocate()
            UnsafeMutableRawPointer(packedB).deallocate()
            edge.deallocate()
        }

        var jc = 0
        while jc < n {
            let ncb = min(K.nc, n - jc)
            var pc = 0
            while pc < k {
                let kcb = min(K.kc, k - pc)
                packB(b.advanced(row: pc, col: jc), depth: kcb, cols: ncb, into: packedB)
                var ic = 0
                while ic < m {
                    let mcb = min(K.mc, m - ic)
                    packA(a.advanced(row: ic, col: pc), rows: mcb, depth: kcb, into: packedA)
                    var jr = 0
                    while jr < ncb {
                        let cols = min(nr, ncb - jr)
                        let panelB = UnsafePointer(packedB + jr * kcb)
                        var ir = 0
                        while ir < mcb {
                            let rows = min(mr, mcb - ir)
                            let panelA = UnsafePointer(packedA + ir * kcb)
                            let tile = c.base + (ic + ir) * c.ld + jc + jr
                            if rows == mr && cols == nr {
                                K.kernel(kc: kcb, a: panelA, b: panelB, c: tile, ldc: c.ld, alpha: alpha)
                            } else {
                                // Partial tile: run the full kernel into scratch, then add only
                                // the part that exists in C.
                                edge.update(repeating: 0, count: mr * nr)
                                K.kernel(kc: kcb, a: panelA, b: panelB, c: edge, ldc: nr, alpha: alpha)
                                for i in 0..<rows {
                                    let dst = tile + i * c.ld, src = edge + i * nr
                                    for j in 0..<cols { dst[j] += src[j] }
                                }
                            }
                            ir += mr
                        }
                        jr += nr
                    }
                    ic += mcb
                }
                pc += kcb
            }
            jc += ncb
        }
    }

    /// Packs `rows × depth` of `a` into `mr`-tall panels: panel `p` holds, for each depth step, its
    /// `mr` row values side by side (`dst[p*mr*depth + step*mr + r]`), zero-padded past `rows`.
    @inline(__always)
    static func packA(_ a: GEMMOperand<Scalar>, rows: Int, depth: Int, into dst: UnsafeMutablePointer<Scalar>) {
        let mr = K.mr
        var r0 = 0
        while r0 < rows {
            let height = min(mr, rows - r0)
            let panel = dst + r0 * depth
            if a.transposed {
                // Column-major view of op(A): the mr values of one step are contiguous in memory.
                for p in 0..<depth {
                    let src = a.base + p * a.ld + r0, out = panel + p * mr
                    for r in 0..<height { out[r] = src[r] }
                    for r in height..<mr { out[r] = 0 }
                }
            } else {
                for r in 0..<height {
                    let src = a.base + (r0 + r) * a.ld, out = panel + r
                    for p in 0..<depth { out[p * mr] = src[p] }
                }
                for r in height..<mr {
                    for p in 0..<depth { panel[p * mr + r] = 0 }
                }
            }
            r0 += mr
        }
    }

    /// Packs `depth × cols` of `b` into `nr`-wide panels: panel `q` holds, for each depth step, its
    /// `nr` column values side by side (`dst[q*nr*depth + step*nr + j]`), zero-padded past `cols`.
    @inline(__always)
    static func packB(_ b: GEMMOperand<Scalar>, depth: Int, cols: Int, into dst: UnsafeMutablePointer<Scalar>) {
        let nr = K.nr
        var j0 = 0
        while j0 < cols {
            let width = min(nr, cols - j0)
            let panel = dst + j0 * depth
            if b.transposed {
                for j in 0..<width {
                    let src = b.base + (j0 + j) * b.ld, out = panel + j
                    for p in 0..<depth { out[p * nr] = src[p] }
                }
                for j in width..<nr {
                    for p in 0..<depth { panel[p * nr + j] = 0 }
                }
            } else {
                // Row-major op(B): the nr values of one step are contiguous; a straight copy.
                for p in 0..<depth {
                    let src = b.base + p * b.ld + j0, out = panel + p * nr
                    out.update(from: src, count: width)
                    for j in width..<nr { out[j] = 0 }
                }
            }
            j0 += nr
        }
    }

    @inline(__always)
    private static func roundUp(_ x: Int, _ multiple: Int) -> Int {
        (x + multiple - 1) / multiple * multiple
    }
}
