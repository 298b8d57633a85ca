import Distributed
import NN
import Tensors

// Notation: T tokens, d model width, N experts in all, k = 1 slot per token, C capacity.

/// How the Switch gate perturbs routing in training.
public enum SwitchJitter: Sendable, Equatable {
    /// No noise.
    case none
    /// Multiply the gate input by `U[1−ε, 1+ε]` (the Switch Transformer paper; ε = 0.01 there).
    case input(epsilon: Double)
    /// Add `U[1−ε, 1+ε]` to the logits (FastMoE's `SwitchGate`, ε = 0.1 there).
    case logits(epsilon: Double)
}

/// The Switch Transformer's top-1 gate (Fedus et al. 2021).
///
/// `p = softmax(z)` in float32; the expert is the arg-max and its score is `p` there (not
/// renormalised). Capacity `C = ceil(cf · T / N)` (cf 1.2 training, 2.4 eval); surplus tokens are
/// dropped in token order. Aux loss `N · Σ_e f_e·P_e`, `f_e` the fraction of tokens routed to `e`
/// before drops, `P_e = mean_t p[t, e]`. With a `batchGroup` (`GlobalBatchRouting`), `T` and the
/// token order are the global batch's, and the jitter is drawn at each token's global index.
/// ```swift
/// let gate = SwitchGate(dModel: 512, globalExpertCount: 8, generator: &g)
/// ```
public final class SwitchGate: Module, Gate, BiasBalancedGate, @unchecked Sendable {
    public let linear: Linear
    public let globalExpertCount: Int
    public let topK = 1
    public var capacityFactor: CapacityFactor
    public var jitter: SwitchJitter
    public var zLossWeight: Double
    /// `.aux` (the default: the loss above), `.bias` (auxiliary-loss-free: no loss, a routing bias) or `.none`.
    public let balance: RoutingBalance
    /// `[N]`, with `balance: .bias`.
    public let expertBias: Buffer?
    public var biasUpdateRate: Double
    /// The ranks whose tokens the balance loss counts (`GlobalBalanceStatistics`); nil = this rank's.
    public var statisticsGroup: (any ProcessGroup)?
    /// The ranks whose tokens capacity and jitter cover (`GlobalBatchRouting`); nil = this rank's.
    public var batchGroup: (any ProcessGroup)?
    /// The source of the jitter (found by reflection: checkpoints save its state).
    public let randomSource: RandomSource
    public var generator: RandomGenerator {
        get { randomSource.generator }
        set { randomSource.generator = newValue }
    }

    public init(dModel: Int, globalExpertCount: Int, trainingCapacityFactor: Double = 1.2, evalCapacityFactor: Double = 2.4,
                jitter: SwitchJitter = .input(epsilon: 0.01), zLossWeight: Double = 0,
                balance: RoutingBalance = .aux, biasUpdateRate: Double = RouterBias.defaultUpdateRate,
                dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) {
        linear = Linear(dModel, globalExpertCount, device: device, dtype: dtype, generator: &generator)
        self.globalExpertCount = globalExpertCount
        capacityFactor = CapacityFactor(training: trainingCapacityFactor, eval: evalCapacityFactor)
        self.jitter = jitter
        self.zLossWeight = zLossWeight
        self.balance = balance
        expertBias = RouterBias.buffer(balance, experts: globalExpertCount, device: device)
        self.biasUpdateRate = biasUpdateRate
        randomSource = RandomSource(GateMath.childGenerator(&generator))
    }

    /// The seats per expert for `tokens` tokens (of the global batch) in the current mode.
    public func capacity(tokens: Int) -> Int {
        capacityFactor.capacity(tokens: tokens, topK: 1, experts: globalExpertCount, training: isTraining)
    }

    public func route(_ x: Tensor) -> GateOutput {
        let batch = GlobalBatch(group: batchGroup, tokens: x.shape[0])
        var input = x
        if isTraining, case .input(let eps) = jitter {
            input = x * Tensor.randomUniform(x.shape, low: 1 - eps, high: 1 + eps, dtype: x.dtype, device: x.device,
                                             generator: &randomSource.generator, firstElement: batch.firstToken * x.lastDimension)
        }
        var z = linear(input)
        if isTraining, case .logits(let eps) = jitter {
            z = z + Tensor.randomUniform(z.shape, low: 1 - eps, high: 1 + eps, dtype: z.dtype, device: z.device,
                                         generator: &randomSource.generator, firstElement: batch.firstToken * z.lastDimension)
        }
        z = GateMath.routerPrecision(z)
        let p = z.softmax()
        let expert = GateMath.choose(p, k: 1, bias: expertBias)
        let score = p.gather(lastAxis: expert)
        let aux = balance == .aux ? GateMath.balanceLoss(probabilities: p, top1: expert, over: statisticsGroup) : nil
        let (plan, tokenCounts) = batch.routingPlan(expert, expertCount: globalExpertCount, capacity: capacity(tokens: batch.tokenCount),
                                                    priority: .tokenMajor, slotMask: nil)
        return GateOutput(expert: plan.keptExpert, score: score, auxLoss: aux, zLoss: RouterZLoss.weighted(z, zLossWeight), plan: plan,
                          probabilities: p, batchTokenCounts: tokenCounts)
    }
}
