import NN
import Tensors

/// GShard's top-2 gate (Lepikhin et al. 2020).
///
/// `z = x W_gᵀ + b_g`; experts = the top 2 logits, scores = softmax over those two (equal to GShard's
/// `p1/(p1+p2)`). Aux loss `N · Σ_e c_e·m_e` with `p = softmax(z)`, `m_e = mean_b p[b, e]`, `c_e` the
/// fraction of tokens whose arg-max is `e`. In training, random routing keeps the second expert only
/// where `2·score[b, 1] ≥ u_b`, `u_b ~ U[0, 1)` (before capacity, as GShard's algorithm: a second
/// choice not sent takes no seat; eval keeps both, so evaluation is deterministic). Capacity
/// `C = ceil(cf · B · 2 / N)` (cf 1.2 training, 2.4 eval); surplus slots are dropped in priority
/// order: all first choices before second choices, token order within each.
/// ```swift
/// let gate = GShardGate(dModel: 512, expertCount: 8, generator: &g)
/// ```
public final class GShardGate: Module, Gate, @unchecked Sendable {
    public let linear: Linear
    public let expertCount: Int
    public let topK = 2
    public var trainingCapacityFactor: Double
    public var evalCapacityFactor: Double
    public var randomRouting: Bool
    public var zLossWeight: Double
    /// The source of the random-routing draws (state saved for an exact resume).
    public var generator: RandomGenerator

    public init(dModel: Int, expertCount: Int, trainingCapacityFactor: Double = 1.2, evalCapacityFactor: Double = 2.4,
                randomRouting: Bool = true, zLossWeight: Double = 0,
                dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) {
        guarantee(expertCount >= 2, "GShardGate: top-2 routing needs at least 2 experts, got \(expertCount)")
        linear = Linear(dModel, expertCount, device: device, dtype: dtype, generator: &generator)
        self.expertCount = expertCount
        self.trainingCapacityFactor = trainingCapacityFactor
        self.evalCapacityFactor = evalCapacityFactor
        self.randomRouting = randomRouting
        self.zLossWeight = zLossWeight
        self.generator = GateMath.childGenerator(&generator)
    }

    /// The seats per expert for `tokens` tokens in the current mode.
    public func capacity(tokens: Int) -> Int {
        GateMath.capacity(factor: isTraining ? trainingCapacityFactor : evalCapacityFactor, tokens: tokens, topK: 2, experts: expertCount)
    }

    public func route(_ x: Tensor) -> GateOutput {
        let b = x.shape[0], n = expertCount
        let z = GateMath.routerPrecision(linear(x))
        let (values, expert) = z.topK(2)
        let score = values.softmax()
        let meanProbability = z.softmax().sumRows() / Double(b)
        // Σ_e c_e·m_e = mean_b m[top1(b)]: no one-hot needed. topK's first column is the arg-max.
        let aux = meanProbability.indexSelect(rows: GateMath.column(expert, 0)).mean() * Double(n)
        var mask: Tensor?
        if isTraining && randomRouting {
            mask = withoutGradient { () -> Tensor in
                let u = Tensor.randomUniform([b, 1], dtype: score.dtype, device: x.device, generator: &generator)
                let keepSecond = GateMath.column(score, 1) * 2 - u
                return Tensor.concat([Tensor.ones([b, 1], dtype: score.dtype, device: x.device), keepSecond], axis: -1)
            }
        }
        let plan = routingPlan(expert, expertCount: n, capacity: capacity(tokens: b), priority: .choiceMajor, slotMask: mask)
        return GateOutput(expert: plan.kept, score: score, auxLoss: aux, zLoss: RouterZLoss.weighted(z, zLossWeight), plan: plan)
    }
}
