import Tensors

// Notation: T tokens, N experts in all, k slots per token, C capacity per expert.
// Formulas the gates share (MOE_SEMANTICS §4), composed from tensor ops so they differentiate and
// run on any device.

/// The capacity factors of a gate that drops slots beyond an expert's capacity (GShard, Switch):
/// `C = ceil(cf · T · k / N)`, with one factor in training and a larger one in evaluation.
public struct CapacityFactor: Sendable, Equatable {
    public var training: Double
    public var eval: Double

    public init(training: Double = 1.2, eval: Double = 2.4) {
        self.training = training
        self.eval = eval
    }

    /// `C` for `tokens` tokens. The tolerance keeps a product like `1.2 · 10` that lands a hair above
    /// an integer in binary from rounding up to the next one.
    public func capacity(tokens: Int, topK: Int, experts: Int, training isTraining: Bool) -> Int {
        let factor = isTraining ? training : eval
        return Int((factor * Double(tokens * topK) / Double(experts) - 1e-9).rounded(.up))
    }
}

/// The router z-loss of ST-MoE (Zoph et al. 2022), an option on every gate: `mean_t (logsumexp_e z)²`.
public enum RouterZLoss {
    /// The weight ST-MoE uses.
    public static let defaultWeight = 1e-3

    /// `weight · mean_t (logsumexp_e z[t, e])²`, or nil when the weight is 0 (off).
    static func weighted(_ z: Tensor, _ weight: Double) -> Tensor? {
        weight == 0 ? nil : z.logSumExp().squared().mean() * weight
    }
}

enum GateMath {
    /// Router logits in at least float32: softmax over bfloat16 logits loses the small probabilities.
    static func routerPrecision(_ z: Tensor) -> Tensor { z.cast(to: z.dtype == .bfloat16 ? .float32 : z.dtype) }

    /// The Switch/GShard balance loss `N · Σ_e f_e·P_e`: `f_e` the fraction of the slots of `top1`
    /// (`[T, 1]`: each token's first choice, before capacity drops; or `[T, k]`: all k choices, as
    /// Megatron-Core's top-k loss) that went to `e`, `P_e` the mean of `p [T, N]` over tokens.
    /// `f` is a count (no gradient); placing ones by index within each row needs no atomics.
    static func balanceLoss(probabilities p: Tensor, top1: Tensor) -> Tensor {
        let t = p.shape[0], n = p.lastDimension, slots = t * top1.lastDimension
        let f = withoutGradient {
            Tensor.ones(top1.shape, dtype: p.dtype, device: p.device).scattered(lastAxis: top1, width: n).sumRows() / Double(slots)
        }
        return (f * (p.sumRows() / Double(t))).sum() * Double(n)
    }

    /// `cv²(v) = var(v) / (mean(v)² + 1e-10)` with the unbiased variance; 0 for a single element.
    static func cvSquared(_ v: Tensor) -> Tensor {
        let n = v.count
        guard n > 1 else { return Tensor.zeros([], dtype: v.dtype, device: v.device) }
        let mean = v.mean()
        let variance = (v - mean).squared().sum() / Double(n - 1)
        return variance / (mean.squared() + 1e-10)
    }

    /// A generator for a gate's own draws, derived from the model's so one seed fixes everything.
    static func childGenerator(_ generator: inout RandomGenerator) -> RandomGenerator {
        let s = generator.next()
        return RandomGenerator(seed: s.seed ^ (s.offset &+ 1) &* 0x9E37_79B9_7F4A_7C15)
    }
}
