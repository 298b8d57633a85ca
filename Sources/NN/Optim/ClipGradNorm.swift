import Tensors

/// Scales the gradients of `parameters` so that their global L2 norm is at most `maxNorm`, and
/// returns the norm before clipping.
///
/// The norm is `√(Σ over all gradient elements g²)`, accumulated in float32 (float64 when every
/// gradient is float64), in a few launches for all gradients (`sumOfSquares`). When it exceeds
/// `maxNorm` each gradient is multiplied in place by `maxNorm / (norm + 1e-6)` (PyTorch's factor).
/// A norm that is not finite leaves the gradients unchanged: the caller should skip the step.
///
/// This is a sync point: the norm is read back to the host once (one scalar for all parameters).
/// ```swift
/// let norm = clipGradNorm(model.parameters(), maxNorm: 1.0)
/// ```
@discardableResult
public func clipGradNorm(_ parameters: [Parameter], maxNorm: Double) -> Double {
    let grads = parameters.compactMap(\.grad)
    guard !grads.isEmpty else { return 0 }
    let norm = withoutGradient { sumOfSquares(grads).item().squareRoot() }
    scaleGradients(parameters, norm: norm, maxNorm: maxNorm)
    return norm
}

/// The clipping step of ``clipGradNorm(_:maxNorm:)`` for a `norm` computed elsewhere (data-parallel
/// training sums the squares over ranks first): scales every gradient by `maxNorm / (norm + 1e-6)`
/// when `norm` exceeds `maxNorm`; a norm that is not finite changes nothing.
public func scaleGradients(_ parameters: [Parameter], norm: Double, maxNorm: Double) {
    guard norm.isFinite, norm > maxNorm else { return }
    let factor = maxNorm / (norm + 1e-6)
    // In place, each gradient buffer once: a backward can hand one tensor to two parameters (the
    // inputs of an addition), which must not be scaled twice.
    var seen = Set<[UInt]>()
    let buffers = parameters.compactMap(\.grad).filter { seen.insert([$0.address, UInt($0.count)]).inserted }
    scaleInPlace(buffers, by: factor)
}
