import Distributed
import NN
import Tensors

// Notation: T tokens, d model width, N experts in all, k = 2 slots per token, C capacity.

/// GShard's top-2 gate (Lepikhin et al. 2020).
///
/// `z = x W_gᵀ + b_g`; experts = the top 2 logits, scores = softmax over those two (equal to GShard's
/// `p1/(p1+p2)`). Aux loss `N · Σ_e c_e·m_e` with `p = softmax(z)`, `m_e = mean_t p[t, e]`, `c_e` the
/// fraction of tokens whose arg-max is `e`. In training, random routing keeps the second expert only
/// where `2·score[t, 1] ≥ u_t`, `u_t ~ U[0, 1)` (before capacity, as GShard's algorithm: a second
/// choice not sent takes no seat; eval keeps both, so evaluation is deterministic). Capacity
/// `C = ceil(cf · T · 2 / N)` (cf 1.2 training, 2.4 eval); surplus slots are dropped in priority
/// order: all first choices before second choices, token order within each. With a `batchGroup`
/// (`GlobalBatchRouting`), `T` is the global batch's, the order runs over it, and `u_t` is drawn at
/// the token's global index.
/// ```swift
/// let gate = GShardGate(dModel: 512, globalExpertCount: 8, generator: &g)
/// ```
public final class GShardGate: Module, Gate, BiasBalancedGate, @unchecked Sendable {
    public let linear: Linear
    public let globalExpertCount: Int
    public let topK = 2
    public var capacityFactor: CapacityFactor
    public var randomRouting: Bool
    public var zLossWeight: Double
    /// `.aux` (the default: the loss above), `.bias` (auxiliary-loss-free: no loss, a routing bias) or `.none`.
    public let balance: RoutingBalance
    /// `[N]`, with `balance: .bias`.
    public let expertBias: Buffer?
    public var biasUpdateRate: Double
    /// The ranks whose tokens the balance loss counts (`GlobalBalanceStatistics`); nil = this rank's.
    public var statisticsGroup: (any ProcessGroup)?
    /// The ranks whose tokens capacity and random routing cover (`GlobalBatchRouting`); nil = this rank's.
    public var batchGroup: (any ProcessGroup)?
    /// The source of the random-routing draws (found by reflection: checkpoints save its state).
    public let randomSource: RandomSource
    public var generator: RandomGenerator {
        get { randomSource.generator }
        set { randomSource.generator = newValue }
    }

    public init(dModel: Int, globalExpertCount: Int, trainingCapacityFactor: Double = 1.2, evalCapacityFactor: Double = 2.4,
                randomRouting: Bool = true, zLossWeight: Double = 0,
                balance: RoutingBalance = .aux, biasUpdateRate: Double = RouterBias.defaultUpdateRate,
                dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) {
        guarantee(globalExpertCount >= 2, "GShardGate: top-2 routing needs at least 2 experts, got \(globalExpertCount)")
        linear = Linear(dModel, globalExpertCount, device: device, dtype: dtype, generator: &generator)
        self.globalExpertCount = globalExpertCount
        capacityFactor = CapacityFactor(training: trainingCapacityFactor, eval: evalCapacityFactor)
        self.randomRouting = randomRouting
        self.zLossWeight = zLossWeight
        self.balance = balance
        expertBias = RouterBias.buffer(balance, experts: globalExpertCount, device: device)
        self.biasUpdateRate = biasUpdateRate
        randomSource = RandomSource(GateMath.childGenerator(&generator))
    }

    /// The seats per expert for `tokens` tokens (of the global batch) in the current mode.
    public func capacity(tokens: Int) -> Int {
        capacityFactor.capacity(tokens: tokens, topK: 2, experts: globalExpertCount, training: isTraining)
    }

    public func route(_ x: Tensor) -> GateOutput {
        let t = x.shape[0], batch = GlobalBatch(group: batchGroup, tokens: t)
        let z = GateMath.routerPrecision(linear(x))
        let p = z.softmax()
        // With a bias, the choice is the top 2 of p + b and the scores stay the softmax of the chosen logits.
        let (expert, score) = z.routerTopK(2, by: expertBias == nil ? .logits : .probabilities, bias: expertBias?.value.cast(to: z.dtype))
        // The choice's first column is the arg-max (of p + b with a bias).
        let aux = balance == .aux ? GateMath.balanceLoss(probabilities: p, top1: expert.slice(lastAxis: 0..<1), over: statisticsGroup) : nil
        var mask: Tensor?
        if isTraining && randomRouting {
            mask = withoutGradient { () -> Tensor in
                let u = Tensor.randomUniform([t, 1], dtype: score.dtype, device: x.device, generator: &randomSource.generator,
                                             firstElement: batch.firstToken)
                let keepSecond = score.slice(lastAxis: 1..<2) * 2 - u
                return Tensor.concat([Tensor.ones([t, 1], dtype: score.dtype, device: x.device), keepSecond], axis: -1)
            }
        }
        let (plan, tokenCounts) = batch.routingPlan(expert, expertCount: globalExpertCount, capacity: capacity(tokens: batch.tokenCount),
                                                    priority: .choiceMajor, slotMask: mask)
        return GateOutput(expert: plan.keptExpert, score: score, auxLoss: aux, zLoss: RouterZLoss.weighted(z, zLossWeight), plan: plan,
                          probabilities: p, batchTokenCounts: tokenCounts)
    }
}
