/// What a matrix product does to its result before writing it (cuBLASLt's epilogues), for
/// `out = op(a) · op(b)`, 2-D row-major: `out` `[M, N]`, the inner dimension `K`. Every tensor named
/// here has the product's dtype; a bias has one value per column of `out` (a layer's output feature).
/// GELU is the tanh approximation (`UnaryOp.geluTanh`), the one cuBLASLt computes.
public enum MatmulEpilogue {
    /// `out = P + bias`, `bias` `[N]` added to every row.
    case bias(Tensor)
    /// `preactivation = P (+ bias)`, `out = gelu(preactivation)`; `preactivation` `[M, N]` is written
    /// for the backward.
    case gelu(bias: Tensor?, preactivation: Tensor)
    /// `out = P ⊙ gelu'(preactivation)` (the gradient through GELU of the product `P = g · W`), and
    /// `biasGradient` `[N]` = the column sums of `out`, when given.
    case geluBackward(preactivation: Tensor, biasGradient: Tensor?)
    /// `out = P`, and `biasGradient` `[M]` = `Σ_k op(a)[i, k]`: the weight gradient `dW = gᵀ·x` with
    /// the bias gradient `Σ_rows g` read from the same operand.
    case biasGradientOfA(Tensor)
}

/// A matrix product with a fused epilogue: the primitive under `linear` and `geluFeedForward`.
///
/// A separate protocol, as `MoEBackend` is: `Backend` stays the dense core. The op layer allocates
/// every output (the product, the pre-activation, the bias gradient) and falls back to
/// ``Backend/unfusedMatmul(_:_:_:transposeA:transposeB:epilogue:)`` on a backend that does not
/// conform. The CPU runs that unfused form, which is the reference; CUDA runs cuBLASLt and the
/// unfused form where cuBLASLt cannot.
public protocol EpilogueBackend: Backend {
    /// `out = op(a) · op(b)` with `epilogue` applied: `a` `[M, K]` (`[K, M]` when `transposeA`), `b`
    /// `[K, N]` (`[N, K]` when `transposeB`), `out` `[M, N]`, one float dtype throughout.
    func matmul(_ a: Tensor, _ b: Tensor, _ out: Tensor, transposeA: Bool, transposeB: Bool, epilogue: MatmulEpilogue)
}

extension Backend {
    /// The epilogue as separate primitives after a plain `matmul`: the same primitives, in the same
    /// order, as the unfused ops (`matmul`, `+ bias`, `gelu`, their backward, `sumRows`) that
    /// `Linear` and `MLP` composed before, so the CPU results did not change. Each runs in place on
    /// the product, which goes straight into the output (or the pre-activation): a product of its own
    /// made the MLP's forward and backward hold a third `[N, H]` buffer.
    public func unfusedMatmul(_ a: Tensor, _ b: Tensor, _ out: Tensor, transposeA: Bool, transposeB: Bool, epilogue: MatmulEpilogue) {
        switch epilogue {
        case .bias(let bias):
            matmul(a, b, out, transposeA: transposeA, transposeB: transposeB, alpha: 1, beta: 0)
            binary(.add, out, bias, .row, out)
        case .gelu(let bias, let preactivation):
            matmul(a, b, preactivation, transposeA: transposeA, transposeB: transposeB, alpha: 1, beta: 0)
            if let bias { binary(.add, preactivation, bias, .row, preactivation) }
            unary(.geluTanh, preactivation, out)
        case .geluBackward(let preactivation, let biasGradient):
            matmul(a, b, out, transposeA: transposeA, transposeB: transposeB, alpha: 1, beta: 0)
            unaryBackward(.geluTanh, x: preactivation, gradOut: out, out)
            if let biasGradient { sumRows(out, biasGradient) }
        case .biasGradientOfA(let biasGradient):
            matmul(a, b, out, transposeA: transposeA, transposeB: transposeB, alpha: 1, beta: 0)
            // op(a) is [M, K]: stored [K, M] its sums over K are column sums, stored [M, K] row sums.
            if transposeA { sumRows(a, biasGradient) } else { reduceLastAxis(.sum, a, biasGradient) }
        }
    }
}
