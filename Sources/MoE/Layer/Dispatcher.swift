import Tensors

/// The expert-contiguous rows of one layer's forward, and what combine needs to undo the dispatch.
public struct DispatchedTokens: @unchecked Sendable {
    /// `[S, d]`: the kept slots' token rows in expert order (expert 0's rows, then expert 1's, ...).
    public let rows: Tensor
    /// Rows per expert and the expert of each row: what the experts compute over.
    public let groups: ExpertGroups
    /// The plan the rows were laid out by (`slotPosition` maps each slot back to its row).
    public let plan: RoutingPlan
    /// Host copies of the plan's counts (routed, and kept), from the layer's single download.
    public let countsBeforeDrop: [Int]
    public let counts: [Int]
    /// `B` and `k` of the routing table.
    public let tokenCount: Int
    public let topK: Int
}

/// Moves tokens to experts and back (MOE_SEMANTICS §2): `dispatch` lays the kept slots out in
/// expert order (a row gather by the routing plan); `combine` brings the expert outputs back per slot
/// and weights them by the scores: `out[b] = Σ_j score[b, j] · y[slotPosition(b, j)]`, a dropped slot
/// contributing an exact zero.
///
/// Expert parallelism (W > 1, MOE_SEMANTICS §3) slots in here and only here: a subclass's `dispatch`
/// follows the local layout with the count exchange and the global scatter (so `rows` and `groups`
/// describe the rows this rank's experts receive, expert-major, source-rank-minor), and its
/// `combine` starts with the global gather back into this layout before the same weighting. The
/// gates, experts and layer do not change.
open class Dispatcher: @unchecked Sendable {
    /// `N`: experts in all.
    public let expertCount: Int

    public init(expertCount: Int) { self.expertCount = expertCount }

    /// Lays out the rows of `x [B, d]` that `routing` keeps, in expert order.
    open func dispatch(_ x: Tensor, routing: GateOutput) -> DispatchedTokens {
        let b = x.shape[0], k = routing.expert.lastDimension
        let plan = routing.plan ?? routingPlan(routing.expert, expertCount: expertCount)
        // The one host sync of the layer: the grouped GEMM's problem sizes (and, with expert
        // parallelism, the NCCL message sizes) must be known on the host. Routed and kept counts come
        // in one download; the load monitor reuses them.
        let both = plan.counts.int32s().map(Int.init)
        let countsBeforeDrop = Array(both[0..<expertCount]), counts = Array(both[expertCount...])
        let s = counts.reduce(0, +)
        // An empty [0, d] result cannot go through the row gather (its reshape infers a width from 0 rows).
        let rows = s == 0
            ? Tensor.zeros([0, x.lastDimension], dtype: x.dtype, device: x.device)
            : x.indexSelect(rows: plan.sortedToken.rows(0..<s))
        let groups = ExpertGroups(sizes: counts, expertOfRow: plan.sortedExpert.rows(0..<s))
        return DispatchedTokens(rows: rows, groups: groups, plan: plan, countsBeforeDrop: countsBeforeDrop,
                                counts: counts, tokenCount: b, topK: k)
    }

    /// `out[b] = Σ_j score[b, j] · y[slot (b, j)]` for expert outputs `y [S, d]` in dispatch order.
    open func combine(_ y: Tensor, score: Tensor, _ dispatched: DispatchedTokens) -> Tensor {
        let b = dispatched.tokenCount, k = dispatched.topK, d = y.lastDimension
        guarantee(score.shape == [b, k], "combine: score \(score.shape) does not match the dispatch's [\(b), \(k)]")
        if y.shape[0] == 0 { return Tensor.zeros([b, d], dtype: y.dtype, device: y.device) }
        let weights = score.cast(to: y.dtype)
        // Dropped slots gather an exact zero row (slotPosition -1).
        let perSlot = y.indexSelect(rows: dispatched.plan.slotPosition)
        if k == 1 { return perSlot * weights.reshaped([b]) }
        // [B,1,k] × [B,k,d]: its backward is exactly gy = score·gout and gscore = <gout, y>.
        return weights.reshaped([b, 1, k]).matmul(perSlot.reshaped([b, k, d])).reshaped([b, d])
    }
}
