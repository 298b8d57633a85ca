import NN
import Tensors

// Notation: T tokens, d model width, N experts in all, k slots per token.

/// FastMoE's `NaiveGate`: `z = x W_gᵀ + b_g`, the `k` largest logits per token, and a softmax over
/// those `k` values as the scores. No capacity, no drops, no balance loss.
/// ```swift
/// let gate = TopKGate(dModel: 512, globalExpertCount: 8, topK: 2, generator: &g)
/// let routing = gate.route(x)   // routing.expert [T, 2], routing.score [T, 2]
/// ```
public final class TopKGate: Module, Gate, @unchecked Sendable {
    /// `Linear(d, N)` with PyTorch's default init.
    public let linear: Linear
    public let globalExpertCount: Int
    public let topK: Int
    /// Weight of the router z-loss (0 = off; `RouterZLoss.defaultWeight` is ST-MoE's 1e-3).
    public var zLossWeight: Double

    public init(dModel: Int, globalExpertCount: Int, topK: Int = 2, zLossWeight: Double = 0,
                dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) {
        guarantee(topK >= 1 && topK <= globalExpertCount, "TopKGate: topK \(topK) must be in 1...\(globalExpertCount)")
        linear = Linear(dModel, globalExpertCount, device: device, dtype: dtype, generator: &generator)
        self.globalExpertCount = globalExpertCount
        self.topK = topK
        self.zLossWeight = zLossWeight
    }

    public func route(_ x: Tensor) -> GateOutput {
        let z = linear(x)
        let (values, expert) = z.topK(topK)
        return GateOutput(expert: expert, score: values.softmax(), zLoss: RouterZLoss.weighted(z, zLossWeight))
    }
}
