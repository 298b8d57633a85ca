// Float64 finite-difference checks and fresh random inputs shared by every test target.
import NN
import Tensors

/// Central finite differences in float64 against the autograd gradient of
/// `loss = Σ f(inputs) ⊙ w` for a fixed random `w` (so every output element matters).
/// Returns the largest error relative to max(1, |numeric|).
public func gradientCheckError(_ inputs: [Tensor], epsilon: Double = 1e-6, _ f: ([Tensor]) -> Tensor) -> Double {
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
public func randn(_ shape: [Int], seed: UInt64, scale: Double = 1, shift: Double = 0) -> Tensor {
    var g = RandomGenerator(seed: seed)
    return Tensor.randomNormal(shape, mean: shift, std: scale, dtype: .float64, generator: &g)
}

/// Float64 values bounded away from zero (for log, sqrt, reciprocal, division).
public func positive(_ shape: [Int], seed: UInt64) -> Tensor {
    var g = RandomGenerator(seed: seed)
    return Tensor.randomUniform(shape, low: 0.5, high: 2, dtype: .float64, generator: &g)
}

/// Finite differences of a scalar `loss()` with respect to up to `elements` entries (spread over the
/// tensor) of each float64 parameter, against the autograd gradient. Returns the worst error
/// relative to max(1e-3, |numeric|), so tiny gradients are compared absolutely.
public func parameterGradientError(_ parameters: [Parameter], elements: Int = 6, epsilon: Double = 1e-6,
                            _ loss: () -> Tensor) -> Double {
    for p in parameters { p.grad = nil }
    loss().backward()
    var worst = 0.0
    for p in parameters {
        guarantee(p.value.dtype == .float64, "parameterGradientError: cast the module to float64 first")
        let original = p.value
        let analytic = original.grad?.doubles() ?? [Double](repeating: 0, count: original.count)
        let base = original.doubles()
        let stride = max(1, base.count / elements)
        for j in Swift.stride(from: 0, to: base.count, by: stride).prefix(elements) {
            func value(at delta: Double) -> Double {
                var v = base
                v[j] += delta
                p.value = Tensor(v, shape: original.shape)
                return withoutGradient { loss().item() }
            }
            let numeric = (value(at: epsilon) - value(at: -epsilon)) / (2 * epsilon)
            p.value = original
            worst = max(worst, Swift.abs(numeric - analytic[j]) / max(1e-3, Swift.abs(numeric)))
        }
    }
    return worst
}

/// The largest absolute difference between two equally long arrays.
public func maxDifference(_ a: [Double], _ b: [Double]) -> Double {
    guarantee(a.count == b.count, "maxDifference: \(a.count) vs \(b.count) values")
    return zip(a, b).map { Swift.abs($0 - $1) }.max() ?? 0
}
