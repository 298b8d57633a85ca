/// Which routed slots win an expert's capacity when more slots want it than it holds.
///
/// A slot is the flat index `s = b*k + j` of token `b`'s `j`-th choice in an `[T, k]` routing table.
public enum RoutingPriority: Sendable, Equatable {
    /// Slots ranked by `s` itself: token order, a token's choices together (Switch, k = 1).
    case tokenMajor
    /// Every first choice before every second choice, and so on; token order within a choice:
    /// rank `j*T + b` (GShard's rule, so a later token's first choice beats an earlier token's second).
    case choiceMajor
}

/// The primitives of the MoE path: the routing plan (a counting sort of slots by expert) and the
/// grouped GEMMs of the batched experts. A backend adds them by conforming
/// (`extension CUDABackend: MoEBackend`); the op layer (`Ops/Dispatch.swift`, `Ops/GroupedLinear.swift`) allocates the
/// outputs, as for every primitive, and stops with a message naming this protocol on a backend
/// that does not conform. A separate protocol, so `Backend` stays the dense core and a backend's
/// MoE kernels live in their own files.
///
/// The CPU implementation (`CPU/CPURouting.swift`) is the reference for these semantics.
public protocol MoEBackend: Backend {
    /// The routing plan: which slots an expert keeps, and a stable expert-ordered layout of them.
    ///
    /// Inputs: `expert` `[T, k]` int32, each value in `[0, N)` or `-1` (routed nowhere);
    /// `slotMask`, when given, `[T, k]` float32 (or float64 on the CPU): a slot whose mask is `< 0`
    /// is treated as `-1` before anything is counted (GShard's random routing);
    /// `capacity` `C` (nil = unlimited); `priority` as in `RoutingPriority`; `capacityOffset`, only
    /// with a capacity, `[k, N]` int32 (nil = zeros): `offset[j, g]` seats of expert `g` that slots
    /// outside this table take before this table's choice-`j` slots (the other ranks' slots of higher
    /// priority, when the table is one rank's share of a global batch; see below). Let `e(s)` be slot
    /// `s`'s expert after the mask, `j(s) = s % k` its choice, `rank(s)` its priority rank (`s`, or
    /// `j*T + b`) and `before(s) = #{s' : e(s') == e(s), rank(s') < rank(s)}`. Outputs, all int32:
    /// - `counts` `[2, N]`: row 0 `routedCounts[g] = #{s : e(s) == g}`; row 1
    ///   `keptCounts[g] = #{s : keptExpert[s] == g}` (`min(routedCounts[g], C)` without an offset).
    ///   One tensor so the host reads both with one download.
    /// - `keptExpert` `[T, k]`: `e(s)` if `offset[j(s), e(s)] + before(s) < C`, else `-1`.
    ///
    /// The offset that makes rank `r` of `W` (each with a `[T, k]` table, `cnt_w[j, g]` its routed slots of
    /// choice `j` on expert `g`) keep exactly the slots one table of the `W·T` concatenated tokens (rank
    /// order) would keep: `tokenMajor`, every slot of an earlier rank comes first,
    /// `offset[j, g] = Σ_{w<r} Σ_{j'} cnt_w[j', g]`; `choiceMajor` (global rank `j·W·T + r·T + b`),
    /// the other ranks' earlier choices and the earlier ranks' same choice come first,
    /// `offset[j, g] = Σ_{w≠r} Σ_{j'<j} cnt_w[j', g] + Σ_{w<r} cnt_w[j, g]` (this rank's own earlier
    /// choices are in `before(s)` already). With one rank both are zero.
    /// - `rowOfSlot` `[T*k]`: for a kept slot, `offset[keptExpert[s]] + #{s' < s : keptExpert[s'] == keptExpert[s]}`
    ///   with `offset = exclusive_scan(keptCounts)`; `-1` for a slot not kept. Within an expert the
    ///   order is `s` order (stable), whatever the priority: results are bit-reproducible.
    /// - `slotOfRow` `[T*k]`: the inverse, `slotOfRow[rowOfSlot[s]] = s`; rows `>= Σ keptCounts` hold `-1`.
    /// - `tokenOfRow` `[T*k]`: `slotOfRow[r] / k`, or `-1` where `slotOfRow[r] == -1`.
    /// - `expertOfRow` `[T*k]`: `keptExpert[slotOfRow[r]]`, or `-1` (the expert of each dispatched row).
    ///
    /// No general sort is needed (kernel plan): (1) a histogram of `e(s)` gives row 0 of `counts`;
    /// (2) with a capacity, a stable counting sort of the slots in priority order (histogram, exclusive
    /// scan, stable placement) gives each slot's index within its expert, kept when offset + index `< C`; (3) a
    /// histogram of `keptExpert`, an exclusive scan, and a stable placement in `s` order give
    /// `rowOfSlot`, and scattering `s`, `s / k` and the expert to that row gives the rest.
    func routingPlan(expert: Tensor, slotMask: Tensor?, expertCount: Int, capacity: Int?, capacityOffset: Tensor?, priority: RoutingPriority,
                     keptExpert: Tensor, counts: Tensor, rowOfSlot: Tensor, slotOfRow: Tensor,
                     tokenOfRow: Tensor, expertOfRow: Tensor)

    /// Grouped GEMM over expert-contiguous rows: `x` `[S, a]` holds `sizes[e]` rows for expert `e`
    /// in order from the top (`groups`: `E` sizes, `Σ sizes ≤ S`, on the host or the device);
    /// `weight` `[E, out, in]`. `out_e = x_e · W_eᵀ` (`a = in`, `out` `[S, out]`: the forward) when
    /// `transposeWeight`, else `out_e = x_e · W_e` (`a = out`, `out` `[S, in]`: the data gradient
    /// `gx_e = gy_e W_e`). Every row of a group is written; rows past the groups are not. Same float
    /// dtype throughout.
    func groupedMatmul(_ x: Tensor, weight: Tensor, groups: RowGroups, transposeWeight: Bool, _ out: Tensor)

    /// `groupedMatmul` with `epilogue` applied to its result before it is written (one pass over
    /// the rows instead of a product and then a bias and an activation pass). A backend without a
    /// fused form runs the unfused one, `unfusedGroupedMatmul`: the reference for the semantics.
    func groupedMatmul(_ x: Tensor, weight: Tensor, groups: RowGroups, transposeWeight: Bool, epilogue: GroupedEpilogue, _ out: Tensor)

    /// The weight gradient of a grouped GEMM: `out_e = gy_eᵀ · x_e` (`[out, in]` for each expert),
    /// `gy` `[S, out]`, `x` `[S, in]`, `out` `[E, out, in]` overwritten; an expert with no rows gets zeros.
    func groupedMatmulWeightGradient(_ gy: Tensor, _ x: Tensor, groups: RowGroups, _ out: Tensor)
    /// The weight gradient and, into `biasGradient` (`[E, out]`), the bias gradient of the same
    /// product, `groupedColumnSums(gy)`: where a backend can, from the one pass over `gy` (the default
    /// runs the two).
    func groupedMatmulWeightGradient(_ gy: Tensor, _ x: Tensor, groups: RowGroups, _ out: Tensor, biasGradient: Tensor?)

    /// The grouped bias, in place: `out[r] += table[indices[r]]` for every row `r` of `out` (`[S, c]`),
    /// `indices` `[S]` int32 (the expert of each row), `table` `[E, c]`; a negative index adds nothing.
    /// One pass over `out` instead of materialising the gathered bias rows and adding them.
    func addIndexedRows(_ table: Tensor, indices: Tensor, into out: Tensor)

    /// The grouped bias gradient: `out[e] = Σ x[r]` over expert `e`'s rows `r` (`x` `[S, c]` holding
    /// `sizes[e]` rows for expert `e` in order, `out` `[E, c]`), summed in a fixed order in
    /// float32 (float64 for float64); zeros for an expert without rows. No atomics, so the result
    /// is the same on every run.
    func groupedColumnSums(_ x: Tensor, groups: RowGroups, _ out: Tensor)

    /// A router's choice and combine weights in one pass over the logits (`RouterChoice`); the
    /// default (the reference) runs the composed primitives.
    func routerTopK(_ z: Tensor, k: Int, by choice: RouterChoice, bias: Tensor?, expert: Tensor, score: Tensor)

    /// `routerTopK`'s backward in one pass; the default runs the composed primitives.
    func routerTopKBackward(score: Tensor, expert: Tensor, gradScore: Tensor, _ gradLogits: Tensor)

    /// The combine's backward (`unpermuteTokens`) in one pass over its slots, with `indices` `[T, k]`
    /// int32 (`rowOfSlot`), `slotOfRow` (at least `S` int32: the slot of each row, negative past the
    /// kept ones), the expert outputs `y` `[S, c]`, the output's gradient `g` `[T, c]` and the combine
    /// weights `score` `[T, k]`, all float tensors of `y`'s dtype:
    /// - `rowGradient` `[S, c]`: row `indices[t, j]` is `score[t, j] · g[t]`; a row no slot names is zero;
    /// - `scoreGradient` `[T, k]`: `Σ_c y[indices[t, j], c] · g[t, c]`, 0 where the index is negative,
    ///   summed in float32 (float64 for float64).
    /// Either may be nil. Neither materialises the `[T·k, c]` gathered rows.
    func combineBackward(_ y: Tensor, indices: Tensor, slotOfRow: Tensor, _ g: Tensor, score: Tensor,
                         rowGradient: Tensor?, scoreGradient: Tensor?)
    /// A bias-balanced router's step on the device (MOE_SEMANTICS: DeepSeek-V3's bias balancing):
    /// `bias[e] += rate · sign(mean − routed[e])` with `routed` `[N]` int32 (the step's routed counts,
    /// `mean` their mean) and `bias` `[N]` float32, in place; nothing when `skipUnlessFinite` (a
    /// `[1]` squared gradient norm) is given and not finite, as the optimizer skips that step.
    func routingBiasStep(_ bias: Tensor, routed: Tensor, rate: Double, skipUnlessFinite: Tensor?)
}

/// What a grouped product over expert-contiguous rows does to its result `P` (`[S, c]`) before
/// writing it (cf. `MatmulEpilogue`): row `r` belongs to expert `e = expertOfRow[r]` (`[S]` int32).
/// The activation is any `UnaryOp` (an expert's GELU, ReLU, SiLU); every tensor has `P`'s dtype.
public enum GroupedEpilogue {
    /// `out = P + bias[e]`, `bias` `[E, c]`.
    case bias(Tensor, expertOfRow: Tensor)
    /// `preactivation = P (+ bias[e])`, `out = activation(preactivation)`; `preactivation` `[S, c]`
    /// is written for the backward.
    case activation(UnaryOp, bias: Tensor?, expertOfRow: Tensor, preactivation: Tensor)
    /// `out = P ⊙ activation'(preactivation)`: the gradient through the activation of the product
    /// that gives its output's gradient.
    case activationBackward(UnaryOp, preactivation: Tensor)
}

extension MoEBackend {
    public func groupedMatmulWeightGradient(_ gy: Tensor, _ x: Tensor, groups: RowGroups, _ out: Tensor, biasGradient: Tensor?) {
        groupedMatmulWeightGradient(gy, x, groups: groups, out)
        if let biasGradient { groupedColumnSums(gy, groups: groups, biasGradient) }
    }

    public func groupedMatmul(_ x: Tensor, weight: Tensor, groups: RowGroups, transposeWeight: Bool, epilogue: GroupedEpilogue, _ out: Tensor) {
        unfusedGroupedMatmul(x, weight: weight, groups: groups, transposeWeight: transposeWeight, epilogue: epilogue, out)
    }

    /// The epilogue as the primitives the unfused ops run, in their order: the product (into the
    /// pre-activation for `.activation`), `addIndexedRows` for the bias, then `unary` or
    /// `unaryBackward`; each intermediate stored in the product's dtype, as the unfused ops store it.
    public func unfusedGroupedMatmul(_ x: Tensor, weight: Tensor, groups: RowGroups, transposeWeight: Bool,
                                     epilogue: GroupedEpilogue, _ out: Tensor) {
        switch epilogue {
        case .bias(let bias, let expertOfRow):
            groupedMatmul(x, weight: weight, groups: groups, transposeWeight: transposeWeight, out)
            addIndexedRows(bias, indices: expertOfRow, into: out)
        case .activation(let op, let bias, let expertOfRow, let preactivation):
            groupedMatmul(x, weight: weight, groups: groups, transposeWeight: transposeWeight, preactivation)
            if let bias { addIndexedRows(bias, indices: expertOfRow, into: preactivation) }
            unary(op, preactivation, out)
        case .activationBackward(let op, let preactivation):
            // In place: a product of its own was a third `[N, H]` buffer beside `h` and `dh`.
            groupedMatmul(x, weight: weight, groups: groups, transposeWeight: transposeWeight, out)
            unaryBackward(op, x: preactivation, gradOut: out, out)
        }
    }
}

/// What a router ranks the experts by to choose its `k` (`Tensor.routerTopK`).
public enum RouterChoice: Sendable, Equatable {
    /// The logits themselves (FastMoE's gate; GShard without a routing bias).
    case logits
    /// `softmax(logits)`, plus the routing bias when there is one (bias-balanced gates).
    case probabilities
}

extension MoEBackend {
    /// A router's choice and combine weights (`Tensor.routerTopK`): `expert` `[T, k]` int32, the
    /// `k` largest of the logits `z` `[T, N]` or of `softmax(z) (+ bias [N])`, ties to the lower
    /// expert; `score` `[T, k]` the softmax over the chosen logits. This default runs the primitives
    /// the composed ops ran (softmax, add, `topK`, `gatherLastAxis`, softmax), the reference.
    public func routerTopK(_ z: Tensor, k: Int, by choice: RouterChoice, bias: Tensor?, expert: Tensor, score: Tensor) {
        func output(_ shape: [Int]) -> Tensor { Tensor.empty(shape, dtype: z.dtype, device: z.device) }
        var keys = z
        if choice == .probabilities {
            keys = output(z.shape)
            softmax(z, keys, log: false)
        }
        if let bias {
            let biased = output(z.shape)
            binary(.add, keys, bias, .row, biased)
            keys = biased
        }
        topK(keys, k: k, values: output(expert.shape), indices: expert)
        let chosen = output(expert.shape)
        gatherLastAxis(z, indices: expert, chosen)
        softmax(chosen, score, log: false)
    }

    /// The gradient of `routerTopK`'s logits from that of its scores: `gradLogits[t, e_j] =
    /// s_j·(g_j − Σ_i s_i·g_i)`, 0 elsewhere. The default: softmax backward, then a scatter into zeros.
    public func routerTopKBackward(score: Tensor, expert: Tensor, gradScore: Tensor, _ gradLogits: Tensor) {
        let gradChosen = Tensor.empty(score.shape, dtype: score.dtype, device: score.device)
        softmaxBackward(y: score, gradOut: gradScore, gradChosen, log: false)
        fill(gradLogits, value: 0)
        scatterAddLastAxis(gradChosen, indices: expert, gradLogits)
    }
}
