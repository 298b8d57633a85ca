import Tensors

/// Scales the gradients of `parameters` so that their global L2 norm is at most `maxNorm`, and
/// returns the norm before clipping.
///
/// The norm is `√(Σ over all gradient elements g²)`, accumulated in float32 (float64 when every
/// gradient is float64). When it exceeds `maxNorm` each gradient is replaced by
/// `grad · maxNorm / (norm + 1e-6)` (PyTorch's factor). A norm that is not finite leaves the
/// gradients unchanged: the caller should skip the step.
///
/// This is a sync point: the norm is read back to the host once (one scalar for all parameters).
/// ```swift
/// let norm = clipGradNorm(model.parameters(), maxNorm: 1.0)
/// ```
@discardableResult
public func clipGradNorm(_ parameters: [Parameter], maxNorm: Double) -> Double {
    let grads = parameters.compactMap(\.grad)
    guard !grads.isEmpty else { return 0 }
    let type: DType = grads.allSatisfy { $0.dtype == .float64 } ? .float64 : .float32
    let norm = withoutGradient { () -> Double in
        let partials = grads.map { $0.cast(to: type).squared().sum().reshaped([1]) }
        let total = partials.count == 1 ? partials[0] : Tensor.concat(partials, axis: 0).sum()
        return total.item().squareRoot()
    }
    scaleGradients(parameters, norm: norm, maxNorm: maxNorm)
    return norm
}

/// The clipping step of ``clipGradNorm(_:maxNorm:)`` for a `norm` computed elsewhere (data-parallel
/// training sums the squares over ranks first): scales every gradient by `maxNorm / (norm + 1e-6)`
/// when `norm` exceeds `maxNorm`; a norm that is not finite changes nothing.
public func scaleGradients(_ parameters: [Parameter], norm: Double, maxNorm: Double) {
    guard norm.isFinite, norm > maxNorm else { return }
    let factor = maxNorm / (norm + 1e-6)
    withoutGradient {
        for p in parameters { if let g = p.grad { p.grad = g * factor } }
    }
}
