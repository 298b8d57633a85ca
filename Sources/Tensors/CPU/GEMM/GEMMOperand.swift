/// A row-major matrix as a GEMM reads it: `op(X)` with `op` the transpose when `transposed` is set.
///
/// Element `(row, col)` of `op(X)` sits at `base[row * ld + col]`, or at `base[col * ld + row]` when
/// transposed, so a sub-block starting at `(row, col)` is just another operand with a moved base.
struct GEMMOperand<Scalar>: @unchecked Sendable {
    var base: UnsafePointer<Scalar>
    var ld: Int
    var transposed: Bool

    /// The operand whose element `(0, 0)` is this one's `(row, col)`.
    @inline(__always)
    func advanced(row: Int, col: Int) -> GEMMOperand {
        GEMMOperand(base: base + (transposed ? col * ld + row : row * ld + col), ld: ld, transposed: transposed)
    }
}

/// The output of a GEMM: rows of `ld` elements, starting at `base`.
struct GEMMOutput<Scalar>: @unchecked Sendable {
    var base: UnsafeMutablePointer<Scalar>
    var ld: Int

    @inline(__always)
    func advanced(row: Int, col: Int) -> GEMMOutput {
        GEMMOutput(base: base + row * ld + col, ld: ld)
    }

    /// `C = beta * C` over `rows × cols`, with `beta == 0` writing zeros so that NaN or infinity left
    /// in uninitialized output cannot leak through (`0 * NaN` is NaN), as BLAS specifies.
    func scale(rows: Int, cols: Int, by beta: Scalar) where Scalar: FloatingPoint {
        if beta == 1 { return }
        for i in 0..<rows {
            let row = base + i * ld
            if beta == 0 {
                row.update(repeating: 0, count: cols)
            } else {
                for j in 0..<cols { row[j] *= beta }
            }
        }
    }
}
