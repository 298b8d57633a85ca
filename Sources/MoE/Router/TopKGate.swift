import NN
import Tensors

/// FastMoE's `NaiveGate`, the default: `z = x W_gᵀ + b_g`, the `k` largest logits per token, and a
/// softmax over those `k` values as the scores. No capacity, no drops, no balance loss.
/// ```swift
/// let gate = TopKGate(dModel: 512, expertCount: 8, topK: 2, generator: &g)
/// let routing = gate.route(x)   // routing.expert [B, 2], routing.score [B, 2]
/// ```
public final class TopKGate: Module, Gate, @unchecked Sendable {
    /// `Linear(d, N)` with PyTorch's default init.
    public let linear: Linear
    public let expertCount: Int
    public let topK: Int
    /// Weight of the router z-loss (0 = off; `RouterZLoss.defaultWeight` is ST-MoE's 1e-3).
    public var zLossWeight: Double

    public init(dModel: Int, expertCount: Int, topK: Int = 2, zLossWeight: Double = 0,
                dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) {
        guarantee(topK >= 1 && topK <= expertCount, "TopKGate: topK \(topK) must be in 1...\(expertCount)")
        linear = Linear(dModel, expertCount, device: device, dtype: dtype, generator: &generator)
        self.expertCount = expertCount
        self.topK = topK
        self.zLossWeight = zLossWeight
    }

    public func route(_ x: Tensor) -> GateOutput {
        let z = linear(x)
        let (values, expert) = z.topK(topK)
        return GateOutput(expert: expert, score: values.softmax(), zLoss: RouterZLoss.weighted(z, zLossWeight))
    }
}

/// The router z-loss of ST-MoE (Zoph et al. 2022), an option on every gate: `mean_b (logsumexp_e z)²`.
public enum RouterZLoss {
    /// The weight ST-MoE uses.
    public static let defaultWeight = 1e-3

    /// `weight · zLoss(z)`, or nil when the weight is 0 (off).
    static func weighted(_ z: Tensor, _ weight: Double) -> Tensor? {
        weight == 0 ? nil : GateMath.zLoss(z) * weight
    }
}
