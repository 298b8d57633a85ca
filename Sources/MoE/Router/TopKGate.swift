import Distributed
import NN
import Tensors

// Notation: T tokens, d model width, N experts in all, k slots per token, b the routing bias [N].

/// FastMoE's `NaiveGate`: `z = x W_gᵀ + b_g`, the `k` largest logits per token, and a softmax over
/// those `k` values as the scores. No capacity, no drops; with `balance: .none` (the default here)
/// no balance loss either, exactly FastMoE's gate.
///
/// The other balances: `.aux` returns the top-k balance loss as Megatron-Core applies it,
/// `N · Σ_e f_e·P_e` with `P_e` the mean of the full softmax and `f_e` the fraction of all `T·k`
/// slots that chose `e`; `.bias` chooses the top-k of `p + b` (`p` the scores below) while the
/// weights stay those of the unbiased scores (auxiliary-loss-free balancing, `BiasBalancedGate`).
/// `score: .sigmoid` weighs the chosen experts by `sigmoid(z)` normalised over the k (DeepSeek-V3)
/// instead of the softmax over the k.
/// ```swift
/// let gate = TopKGate(dModel: 512, globalExpertCount: 8, topK: 2, generator: &g)
/// let routing = gate.route(x)   // routing.expert [T, 2], routing.score [T, 2]
/// ```
public final class TopKGate: Module, Gate, BiasBalancedGate, @unchecked Sendable {
    /// `Linear(d, N)` with PyTorch's default init.
    public let linear: Linear
    public let globalExpertCount: Int
    public let topK: Int
    /// Weight of the router z-loss (0 = off; `RouterZLoss.defaultWeight` is ST-MoE's 1e-3).
    public var zLossWeight: Double
    public let balance: RoutingBalance
    public let scoreFunction: RouterScore
    /// `[N]`, with `balance: .bias` (saved in checkpoints as `<gate>.expertBias`).
    public let expertBias: Buffer?
    public var biasUpdateRate: Double
    /// The ranks whose tokens the balance loss counts (`GlobalBalanceStatistics`); nil = this rank's.
    public var statisticsGroup: (any ProcessGroup)?

    public init(dModel: Int, globalExpertCount: Int, topK: Int = 2, zLossWeight: Double = 0,
                balance: RoutingBalance = .none, score: RouterScore = .softmax, biasUpdateRate: Double = RouterBias.defaultUpdateRate,
                dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) {
        guarantee(topK >= 1 && topK <= globalExpertCount, "TopKGate: topK \(topK) must be in 1...\(globalExpertCount)")
        linear = Linear(dModel, globalExpertCount, device: device, dtype: dtype, generator: &generator)
        self.globalExpertCount = globalExpertCount
        self.topK = topK
        self.zLossWeight = zLossWeight
        self.balance = balance
        scoreFunction = score
        expertBias = RouterBias.buffer(balance, experts: globalExpertCount, device: device)
        self.biasUpdateRate = biasUpdateRate
    }

    public func route(_ x: Tensor) -> GateOutput {
        let z = linear(x)
        let zLoss = RouterZLoss.weighted(z, zLossWeight)
        if balance == .none && scoreFunction == .softmax {
            // FastMoE's gate: the top k logits, the softmax over them.
            let (expert, score) = z.routerTopK(topK, by: .logits)
            return GateOutput(expert: expert, score: score, zLoss: zLoss, probabilities: z.softmax())
        }
        let zr = GateMath.routerPrecision(z)
        let expert: Tensor, score: Tensor, probabilities: () -> Tensor
        switch scoreFunction {
        case .softmax:
            probabilities = { zr.softmax() }
            (expert, score) = zr.routerTopK(topK, by: .probabilities, bias: expertBias?.value.cast(to: zr.dtype))
        case .sigmoid:
            let s = zr.sigmoid()
            probabilities = { s / s.sum(lastAxis: ()).reshaped([-1, 1]) }
            expert = GateMath.choose(s, k: topK, bias: expertBias)
            let chosen = s.gather(lastAxis: expert)
            score = chosen / chosen.sum(lastAxis: ()).reshaped([-1, 1])
        }
        // The full distribution only where the aux loss or a reader needs it.
        let p = balance == .aux ? probabilities() : nil
        let aux = p.map { GateMath.balanceLoss(probabilities: $0, top1: expert, over: statisticsGroup) }
        return GateOutput(expert: expert, score: score, auxLoss: aux, zLoss: zLoss, probabilities: p ?? probabilities())
    }
}
