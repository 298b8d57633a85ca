@testable import Tensors

/// Central finite differences in float64 against the autograd gradient of
/// `loss = Σ f(inputs) ⊙ w` for a fixed random `w` (so every output element matters).
/// Returns the largest error relative to max(1, |numeric|).
func gradientCheckError(_ inputs: [Tensor], epsilon: Double = 1e-6, _ f: ([Tensor]) -> Tensor) -> Double {
    var g = RandomGenerator(seed: 99)
    let probe = f(inputs.map { $0.detached() })
    let w = Tensor.randomNormal(probe.shape, dtype: .float64, generator: &g)
    func loss(_ xs: [Tensor]) -> Tensor { (f(xs) * w).sum() }

    let leaves = inputs.map { t -> Tensor in
        let leaf = t.detached()
        return t.dtype == .float64 ? leaf.requiringGradient() : leaf
    }
    loss(leaves).backward()

    var worst = 0.0
    for (i, leaf) in leaves.enumerated() where leaf.dtype == .float64 {
        let analytic = leaf.grad?.doubles() ?? [Double](repeating: 0, count: leaf.count)
        let base = leaf.doubles()
        for j in 0..<base.count {
            func value(at delta: Double) -> Double {
                var v = base
                v[j] += delta
                var xs = inputs.map { $0.detached() }
                xs[i] = Tensor(v, shape: leaf.shape)
                return withoutGradient { loss(xs).item() }
            }
            let numeric = (value(at: epsilon) - value(at: -epsilon)) / (2 * epsilon)
            worst = max(worst, Swift.abs(numeric - analytic[j]) / max(1, Swift.abs(numeric)))
        }
    }
    return worst
}

/// Fresh float64 normal values of a shape (never zeros).
func randn(_ shape: [Int], seed: UInt64, scale: Double = 1, shift: Double = 0) -> Tensor {
    var g = RandomGenerator(seed: seed)
    return Tensor.randomNormal(shape, mean: shift, std: scale, dtype: .float64, generator: &g)
}

/// Float64 values bounded away from zero (for log, sqrt, reciprocal, division).
func positive(_ shape: [Int], seed: UInt64) -> Tensor {
    var g = RandomGenerator(seed: seed)
    return Tensor.randomUniform(shape, low: 0.5, high: 2, dtype: .float64, generator: &g)
}
