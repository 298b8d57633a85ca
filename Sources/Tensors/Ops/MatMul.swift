// Matrix products. a [..., M, K] (or [..., K, M] with transposeA), b [..., K, N] or a shared [K, N]
// (or transposed), out [..., M, N]. Leading batch dimensions are flattened into one.

extension Tensor {
    /// `op(self) · op(b)`; a 2-D `b` is shared by every batch of a batched `self`.
    /// ```swift
    /// let y = x.matmul(weight, transposeB: true)   // x [T, in], weight [out, in] -> [T, out]
    /// ```
    public func matmul(_ b: Tensor, transposeA: Bool = false, transposeB: Bool = false) -> Tensor {
        let a = self
        guarantee(a.dtype == b.dtype, "matmul: dtypes differ: \(a.dtype) and \(b.dtype)")
        guarantee(a.device == b.device, "matmul: devices differ: \(a.device) and \(b.device)")
        let outShape = ShapeCheck.matmul(a.shape, b.shape, transposeA: transposeA, transposeB: transposeB).orStop()
        // A batched left operand times a shared right one is a single 2-D product over all rows.
        if a.rank > 2 && b.rank == 2 {
            return a.reshaped([-1, a.lastDimension]).matmul(b, transposeB: transposeB).reshaped(outShape)
        }
        let a3 = a.rank > 3 ? a.reshaped([-1, a.shape[a.rank - 2], a.lastDimension]) : a
        let b3 = b.rank > 3 ? b.reshaped([-1, b.shape[b.rank - 2], b.lastDimension]) : b
        let out = Tensor.empty(outShape, dtype: dtype, device: device)
        backend.matmul(a3, b3, out, transposeA: transposeA, transposeB: transposeB, alpha: 1, beta: 0)
        return out.recording("matmul", [a, b]) { g in
            // C = op(A)·op(B): dA = dC·op(B)ᵀ (or its transpose), dB = op(A)ᵀ·dC (or its transpose).
            let ga: Tensor? = a.requiresGrad
                ? (transposeA ? b.matmul(g, transposeA: transposeB, transposeB: true)
                              : g.matmul(b, transposeB: !transposeB))
                : nil
            let gb: Tensor? = b.requiresGrad
                ? (transposeB ? g.matmul(a, transposeA: true, transposeB: transposeA)
                              : a.matmul(g, transposeA: !transposeA))
                : nil
            return [ga, gb]
        }
    }
}
