import Tensors

// Formulas the gates share (MOE_SEMANTICS §4), composed from tensor ops so they differentiate and
// run on any device.

enum GateMath {
    /// `C = ceil(cf · B · k / N)`. The tolerance keeps a product like `1.2 · 10` that lands a hair
    /// above an integer in binary from rounding up to the next one.
    static func capacity(factor: Double, tokens: Int, topK: Int, experts: Int) -> Int {
        Int((factor * Double(tokens * topK) / Double(experts) - 1e-9).rounded(.up))
    }

    /// Router logits in at least float32: softmax over bfloat16 logits loses the small probabilities.
    static func routerPrecision(_ z: Tensor) -> Tensor { z.dtype == .bfloat16 ? z.cast(to: .float32) : z }

    /// `cv²(v) = var(v) / (mean(v)² + 1e-10)` with the unbiased variance; 0 for a single element.
    static func cvSquared(_ v: Tensor) -> Tensor {
        let n = v.count
        guard n > 1 else { return Tensor.zeros([], dtype: v.dtype, device: v.device) }
        let mean = v.mean()
        let variance = (v - mean).squared().sum() / Double(n - 1)
        return variance / (mean.squared() + 1e-10)
    }

    /// ST-MoE's router z-loss: `mean_b (logsumexp_e z[b, e])²`.
    static func zLoss(_ z: Tensor) -> Tensor {
        // The shift by the row maximum keeps exp finite; its gradient cancels, so it is taken as a constant.
        let m = withoutGradient { z.max(axis: -1) }.detached()
        let lse = (z - m).exp().sum(lastAxis: ()).log() + m
        return lse.squared().mean()
    }

    /// `softplus(x) = log(1 + eˣ)`, as `relu(x) + log(1 + e^{-|x|})` so large inputs do not overflow.
    static func softplus(_ x: Tensor) -> Tensor { x.relu() + ((-x.abs()).exp() + 1).log() }

    /// The standard normal density `φ(x)`.
    static func normalDensity(_ x: Tensor) -> Tensor { (x.squared() * -0.5).exp() * (1 / (2 * Double.pi).squareRoot()) }

    /// The standard normal CDF `Φ(x)`, differentiable (`Φ' = φ`).
    ///
    /// There is no erf primitive; the exact-GELU backward gives one without a new kernel:
    /// `d/dx [x·Φ(x)] = Φ(x) + x·φ(x)`, so `Φ(x) = gelu'(x) − x·φ(x)`.
    static func normalCDF(_ x: Tensor) -> Tensor {
        let value = withoutGradient { () -> Tensor in
            let derivative = Tensor.empty(x.shape, dtype: x.dtype, device: x.device)
            x.backend.unaryBackward(.geluErf, x: x, gradOut: Tensor.ones(x.shape, dtype: x.dtype, device: x.device), derivative)
            return derivative - x * normalDensity(x)
        }
        return value.recording("normalCDF", [x]) { g in [g * normalDensity(x)] }
    }

    /// A generator for a gate's own draws, derived from the model's so one seed fixes everything.
    static func childGenerator(_ generator: inout RandomGenerator) -> RandomGenerator {
        let s = generator.next()
        return RandomGenerator(seed: s.seed ^ (s.offset &+ 1) &* 0x9E37_79B9_7F4A_7C15)
    }

    /// Column `j` of `[B, k]` as `[B, 1]` (a copy).
    static func column(_ t: Tensor, _ j: Int) -> Tensor {
        let k = t.lastDimension
        var sizes = [Int]()
        if j > 0 { sizes.append(j) }
        sizes.append(1)
        if j < k - 1 { sizes.append(k - 1 - j) }
        return t.split(sizes, axis: -1)[j > 0 ? 1 : 0]
    }
}
