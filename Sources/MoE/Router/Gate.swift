import NN
import Tensors

// Notation: T tokens on this rank, d model width, N experts in all, E experts on this rank, W ranks
// of the expert-parallel group (N = W·E), k slots per token, S dispatched rows, C capacity.

/// A router: scores `x [T, d]` against the `N` experts and picks `k` of them per token.
///
/// Write your own by conforming a `Module` (its parameters train with the model):
/// ```swift
/// final class FirstExpertGate: Module, Gate, @unchecked Sendable {
///     let globalExpertCount = 4, topK = 1
///     func route(_ x: Tensor) -> GateOutput {
///         let t = x.shape[0]
///         return GateOutput(expert: Tensor.zeros([t, 1], dtype: .int32), score: Tensor.ones([t, 1], dtype: x.dtype))
///     }
/// }
/// ```
public protocol Gate: Module {
    /// `N`: the experts in all (over every rank of an expert-parallel group).
    var globalExpertCount: Int { get }
    /// `k`: the slots each token is routed to.
    var topK: Int { get }
    /// Routes `x [T, d]`; see `GateOutput`.
    func route(_ x: Tensor) -> GateOutput
}

/// What a gate decides for `T` tokens.
public struct GateOutput: @unchecked Sendable {
    /// `[T, k]` int32: the global expert of each slot, `-1` for a slot routed nowhere (dropped).
    public var expert: Tensor
    /// `[T, k]`: the combine weight of each slot (differentiable; not renormalised after drops).
    public var score: Tensor
    /// The load-balancing loss (unweighted: the layer weights it by `balanceLossWeight`), if any.
    public var auxLoss: Tensor?
    /// The router z-loss already multiplied by the gate's `zLossWeight`, when that is on.
    public var zLoss: Tensor?
    /// The routing plan, when the gate had to compute it (capacity gates count slots to drop them);
    /// then `expert` is `plan.keptExpert` and the dispatcher reuses the plan instead of counting again.
    public var plan: RoutingPlan?
    /// `[T, N]`: every expert's score for every token, normalised over the experts (softmax, or the
    /// sigmoids over their sum), differentiable; for the sequence-wise balance loss. Nil if not given.
    /// Computed when read, where the gate did not need it itself (a `[T, N]` softmax that no one
    /// reads was a kernel a layer in every step), so read it once.
    public var probabilities: Tensor? {
        get { probabilitiesSource() }
        set { probabilitiesSource = { newValue } }
    }
    private var probabilitiesSource: () -> Tensor?
    /// Expert choice in training: the fraction of the evaluation routing's slots (per-token top-k of
    /// the same scores) that this routing did not choose (0 = the two agree). Nil for other gates.
    public var routingDisagreement: Double?
    /// `[W]` int32 on the device: the token counts of the ranks of the global batch, when the gate
    /// routed by it assuming every rank holds `T` (`GlobalBatchRouting`). The dispatcher reads them
    /// with its one download and stops if they differ. Nil when the gate routed this rank's tokens alone.
    public var batchTokenCounts: Tensor?

    public init(expert: Tensor, score: Tensor, auxLoss: Tensor? = nil, zLoss: Tensor? = nil, plan: RoutingPlan? = nil,
                probabilities: @autoclosure @escaping () -> Tensor? = nil, routingDisagreement: Double? = nil, batchTokenCounts: Tensor? = nil) {
        guarantee(expert.dtype == .int32 && expert.rank == 2 && score.shape == expert.shape,
                     "GateOutput: expert \(expert.shape) \(expert.dtype) and score \(score.shape) must both be [T, k], expert int32")
        self.expert = expert
        self.score = score
        self.auxLoss = auxLoss
        self.zLoss = zLoss
        self.plan = plan
        probabilitiesSource = probabilities
        self.routingDisagreement = routingDisagreement
        self.batchTokenCounts = batchTokenCounts
    }
}
