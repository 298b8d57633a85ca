import NN
import Tensors

/// A router: scores `x [B, d]` against `expertCount` experts and picks `topK` of them per token.
///
/// Write your own by conforming a `Module` (its parameters train with the model):
/// ```swift
/// final class FirstExpertGate: Module, Gate {
///     let expertCount = 4, topK = 1
///     func route(_ x: Tensor) -> GateOutput {
///         let b = x.shape[0]
///         return GateOutput(expert: Tensor.zeros([b, 1], dtype: .int32), score: Tensor.ones([b, 1], dtype: x.dtype))
///     }
/// }
/// ```
public protocol Gate: Module {
    /// `N`: the experts in all (over every rank of an expert-parallel group).
    var expertCount: Int { get }
    /// `k`: the slots each token is routed to.
    var topK: Int { get }
    /// Routes `x [B, d]`; see `GateOutput`.
    func route(_ x: Tensor) -> GateOutput
}

/// What a gate decides for `B` tokens.
public struct GateOutput: @unchecked Sendable {
    /// `[B, k]` int32: the expert of each slot, `-1` for a slot routed nowhere (dropped).
    public var expert: Tensor
    /// `[B, k]`: the combine weight of each slot (differentiable; not renormalised after drops).
    public var score: Tensor
    /// The load-balancing loss (unweighted: the trainer multiplies it by its balance weight), if any.
    public var auxLoss: Tensor?
    /// The router z-loss already multiplied by the gate's `zLossWeight`, when that is on.
    public var zLoss: Tensor?
    /// The dispatch plan, when the gate had to compute it (capacity gates count slots to drop them);
    /// then `expert` is `plan.kept` and the dispatcher reuses the plan instead of counting again.
    public var plan: RoutingPlan?

    public init(expert: Tensor, score: Tensor, auxLoss: Tensor? = nil, zLoss: Tensor? = nil, plan: RoutingPlan? = nil) {
        guarantee(expert.dtype == .int32 && expert.rank == 2 && score.shape == expert.shape,
                     "GateOutput: expert \(expert.shape) \(expert.dtype) and score \(score.shape) must both be [B, k], expert int32")
        self.expert = expert
        self.score = score
        self.auxLoss = auxLoss
        self.zLoss = zLoss
        self.plan = plan
    }
}
