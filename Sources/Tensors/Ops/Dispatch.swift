// MoE token movement: the routing plan, the permutation of token rows into expert order, and its
// inverse with the weighted combine. Forward and backward side by side; no atomics anywhere, so
// outputs and gradients are bit-reproducible run to run for every k.
// Shapes: T tokens, d width, k slots per token (slot s = t*k + j), N experts, S kept rows.

/// The result of `routingPlan`: every tensor int32, on the routing table's device.
/// See `MoEBackend.routingPlan` for the exact semantics of each field.
public struct RoutingPlan: @unchecked Sendable {
    /// `[T, k]`: the expert of each slot, `-1` where the slot is routed nowhere or dropped by capacity.
    public let keptExpert: Tensor
    /// `[2, N]`: row 0 the routed counts, row 1 the kept counts (one download reads both).
    public let counts: Tensor
    /// `[T*k]`: the row each kept slot occupies in expert order, `-1` for slots not kept.
    public let rowOfSlot: Tensor
    /// `[T*k]`: the slot `t*k + j` at each expert-ordered row, `-1` past the kept ones.
    public let slotOfRow: Tensor
    /// `[T*k]`: the token of each expert-ordered row, `-1` past the kept ones (the permutation's gather).
    public let tokenOfRow: Tensor
    /// `[T*k]`: the expert of each expert-ordered row, `-1` past the kept ones.
    public let expertOfRow: Tensor
    /// `N`: the experts in all.
    public let globalExpertCount: Int

    /// `T`.
    public var tokenCount: Int { keptExpert.shape[0] }
    /// `k`.
    public var topK: Int { keptExpert.lastDimension }
    /// `[N]`: slots routed to each expert before capacity drops (a view of `counts`).
    public var routedCounts: Tensor { counts.rows(0..<1).reshaped([globalExpertCount]) }
    /// `[N]`: slots each expert keeps (a view of `counts`).
    public var keptCounts: Tensor { counts.rows(1..<2).reshaped([globalExpertCount]) }
}

/// Plans the dispatch of an `[T, k]` int32 routing table over `expertCount` experts: a counting sort
/// of the slots by expert, stable in slot order, keeping at most `capacity` slots per expert in
/// `priority` order; slots whose `slotMask` is negative are routed nowhere. `capacityOffset`
/// (`[k, N]` int32) counts seats taken before this table's slots of each choice, so one rank's share
/// of a global batch keeps the slots the whole batch's plan would (`MoEBackend.routingPlan` gives the
/// formula). Not differentiable. Device work only: nothing here waits for the device.
/// ```swift
/// let plan = routingPlan(expert, expertCount: 4, capacity: 3, priority: .choiceMajor)
/// let xs = permuteTokens(x, by: plan)   // [T*k, d]: rows in expert order, zero rows past the kept ones
/// ```
public func routingPlan(_ expert: Tensor, expertCount: Int, capacity: Int? = nil, capacityOffset: Tensor? = nil,
                        priority: RoutingPriority = .tokenMajor, slotMask: Tensor? = nil) -> RoutingPlan {
    guarantee(expert.dtype == .int32 && expert.rank == 2, "routingPlan: expert must be [T, k] int32, got \(expert.shape) \(expert.dtype)")
    guarantee(expertCount >= 1, "routingPlan: expertCount \(expertCount) must be at least 1")
    guarantee(capacity.map { $0 >= 0 } ?? true, "routingPlan: capacity \(capacity!) is negative")
    if let offset = capacityOffset {
        guarantee(capacity != nil, "routingPlan: a capacityOffset needs a capacity")
        guarantee(offset.dtype == .int32 && offset.shape == [expert.lastDimension, expertCount] && offset.device == expert.device,
                  "routingPlan: capacityOffset \(offset.shape) \(offset.dtype) on \(offset.device) must be [k, N] = "
                  + "[\(expert.lastDimension), \(expertCount)] int32 on \(expert.device)")
    }
    if let mask = slotMask {
        guarantee(mask.shape == expert.shape && mask.dtype.isFloatingPoint && mask.device == expert.device,
                     "routingPlan: slotMask \(mask.shape) \(mask.dtype) on \(mask.device) does not fit expert \(expert.shape) on \(expert.device)")
    }
    let slots = expert.count, device = expert.device
    func int32s(_ shape: [Int]) -> Tensor { Tensor.empty(shape, dtype: .int32, device: device) }
    let plan = RoutingPlan(keptExpert: int32s(expert.shape), counts: int32s([2, expertCount]), rowOfSlot: int32s([slots]),
                           slotOfRow: int32s([slots]), tokenOfRow: int32s([slots]), expertOfRow: int32s([slots]),
                           globalExpertCount: expertCount)
    expert.moeBackend("routingPlan").routingPlan(
        expert: expert, slotMask: slotMask?.detached(), expertCount: expertCount, capacity: capacity,
        capacityOffset: capacityOffset, priority: priority,
        keptExpert: plan.keptExpert, counts: plan.counts, rowOfSlot: plan.rowOfSlot, slotOfRow: plan.slotOfRow,
        tokenOfRow: plan.tokenOfRow, expertOfRow: plan.expertOfRow)
    return plan
}

/// Permute: the token rows of `x [T, d]` in expert order, `[T*k, d]`: row `r` is token
/// `tokenOfRow[r]`, and the rows past the kept ones are zero. Differentiable in `x`.
///
/// All `T*k` rows are gathered so that no host count is needed (no sync); the caller takes the first
/// `S` rows (a free view) once the counts are on the host.
/// Backward: `gx[t] = Σ_j g[rowOfSlot[t*k + j]]`, the k copies of a token added in `j` order
/// (`gatherSumRows`), skipping dropped slots.
/// ```swift
/// let xs = permuteTokens(x, by: plan).rows(0..<keptRows)
/// ```
public func permuteTokens(_ x: Tensor, by plan: RoutingPlan) -> Tensor {
    let t = plan.tokenCount, k = plan.topK
    guarantee(x.rank == 2 && x.shape[0] == t && x.device == plan.tokenOfRow.device,
              "permuteTokens: x \(x.shape) on \(x.device) does not fit a plan of \(t) tokens on \(plan.tokenOfRow.device)")
    let out = Tensor.empty([t * k, x.lastDimension], dtype: x.dtype, device: x.device)
    x.backend.gatherRows(x, indices: plan.tokenOfRow, out)
    return out.recording("permuteTokens", [x]) { g in
        let gx = Tensor.empty(x.shape, dtype: g.dtype, device: g.device)
        g.backend.gatherSumRows(g, indices: plan.rowOfSlot.reshaped([t, k]), weights: nil, gx)
        return [gx]
    }
}

/// Unpermute and combine: `out[t] = Σ_j score[t, j] · y[rowOfSlot[t*k + j]]` for expert outputs
/// `y [S, d]` in the plan's row order; a dropped slot contributes an exact zero (MOE_SEMANTICS §1:
/// scores are not renormalised). Differentiable in `y` and `score`; `score` is cast to `y`'s dtype.
///
/// Backward: `gy[r] = score[slotOfRow[r]] · g[tokenOfRow[r]]` (zero for a row past the kept ones)
/// and `gscore[t, j] = ⟨g[t], y[rowOfSlot[t*k + j]]⟩`, in one pass over the slots
/// (`MoEBackend.combineBackward`), in a fixed order.
/// ```swift
/// let out = unpermuteTokens(expertOutputs, by: plan, score: routing.score)   // [T, d]
/// ```
public func unpermuteTokens(_ y: Tensor, by plan: RoutingPlan, score: Tensor) -> Tensor {
    let t = plan.tokenCount, k = plan.topK, d = y.lastDimension, s = y.shape[0]
    guarantee(y.rank == 2 && s <= t * k && score.shape == [t, k],
              "unpermuteTokens: y \(y.shape) and score \(score.shape) do not fit a plan of \(t) tokens × \(k) slots")
    let weights = score.cast(to: y.dtype)
    if s == 0 {
        // Still a node of the graph: under expert parallelism the backward of the exchange that
        // produced `y` is a collective every rank must reach, also one whose tokens all dropped.
        return Tensor.zeros([t, d], dtype: y.dtype, device: y.device).recording("unpermuteTokens", [y, weights]) { _ in
            [Tensor.zeros(y.shape, dtype: y.dtype, device: y.device), Tensor.zeros(weights.shape, dtype: weights.dtype, device: weights.device)]
        }
    }
    let slotIndex = plan.rowOfSlot.reshaped([t, k])
    let out = Tensor.empty([t, d], dtype: y.dtype, device: y.device)
    y.backend.gatherSumRows(y, indices: slotIndex, weights: weights, out)
    return out.recording("unpermuteTokens", [y, weights]) { g in
        let gy = y.requiresGrad ? Tensor.empty(y.shape, dtype: y.dtype, device: y.device) : nil
        let gw = weights.requiresGrad ? Tensor.empty([t, k], dtype: y.dtype, device: y.device) : nil
        y.moeBackend("unpermuteTokens").combineBackward(y, indices: slotIndex, slotOfRow: plan.slotOfRow, g, score: weights,
                                                       rowGradient: gy, scoreGradient: gw)
        return [gy, gw]
    }
}
