import NN
import Tensors

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
/// renormalised). Capacity `C = ceil(cf · B / N)` (cf 1.2 training, 2.4 eval); surplus tokens are
/// dropped in token order. Aux loss `N · Σ_e f_e·P_e`, `f_e` the fraction of tokens routed to `e`
/// before drops, `P_e = mean_b p[b, e]`.
/// ```swift
/// let gate = SwitchGate(dModel: 512, expertCount: 8, generator: &g)
/// ```
public final class SwitchGate: Module, Gate, @unchecked Sendable {
    public let linear: Linear
    public let expertCount: Int
    public let topK = 1
    public var trainingCapacityFactor: Double
    public var evalCapacityFactor: Double
    public var jitter: SwitchJitter
    public var zLossWeight: Double
    /// The source of the jitter (state saved for an exact resume).
    public var generator: RandomGenerator

    public init(dModel: Int, expertCount: Int, trainingCapacityFactor: Double = 1.2, evalCapacityFactor: Double = 2.4,
                jitter: SwitchJitter = .input(epsilon: 0.01), zLossWeight: Double = 0,
                dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) {
        linear = Linear(dModel, expertCount, device: device, dtype: dtype, generator: &generator)
        self.expertCount = expertCount
        self.trainingCapacityFactor = trainingCapacityFactor
        self.evalCapacityFactor = evalCapacityFactor
        self.jitter = jitter
        self.zLossWeight = zLossWeight
        self.generator = GateMath.childGenerator(&generator)
    }

    /// The seats per expert for `tokens` tokens in the current mode.
    public func capacity(tokens: Int) -> Int {
        GateMath.capacity(factor: isTraining ? trainingCapacityFactor : evalCapacityFactor, tokens: tokens, topK: 1, experts: expertCount)
    }

    public func route(_ x: Tensor) -> GateOutput {
        let b = x.shape[0], n = expertCount
        var input = x
        if isTraining, case .input(let eps) = jitter {
            input = x * Tensor.randomUniform(x.shape, low: 1 - eps, high: 1 + eps, dtype: x.dtype, device: x.device, generator: &generator)
        }
        var z = linear(input)
        if isTraining, case .logits(let eps) = jitter {
            z = z + Tensor.randomUniform(z.shape, low: 1 - eps, high: 1 + eps, dtype: z.dtype, device: z.device, generator: &generator)
        }
        z = GateMath.routerPrecision(z)
        let p = z.softmax()
        let (score, expert) = p.topK(1)
        // Σ_e f_e·P_e = mean_b P[expert(b)], with the experts taken before capacity drops.
        let aux = (p.sumRows() / Double(b)).indexSelect(rows: expert).mean() * Double(n)
        let plan = routingPlan(expert, expertCount: n, capacity: capacity(tokens: b), priority: .tokenMajor)
        return GateOutput(expert: plan.kept, score: score, auxLoss: aux, zLoss: RouterZLoss.weighted(z, zLossWeight), plan: plan)
    }
}
