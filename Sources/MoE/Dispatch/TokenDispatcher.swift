import Tensors

// Notation: T tokens on this rank, d model width, N experts in all, E experts on this rank, W ranks
// of the expert-parallel group (N = W·E), k slots per token, S rows this rank's experts compute.

/// One layer's dispatched rows and what `combine` needs to undo the dispatch.
public struct DispatchedTokens: @unchecked Sendable {
    /// `[S, d]`: the rows this rank's experts compute, expert-major (and source-rank-minor).
    public let rows: Tensor
    /// Rows per local expert and the local expert of each row: what the experts compute over.
    public let groups: ExpertGroups
    /// The routing plan the rows were permuted by.
    public let plan: RoutingPlan
    /// The message sizes of the exchange; nil when nothing crosses ranks.
    public let layout: ExchangeLayout?
    /// This rank's routed and kept counts (the load monitor's input), read from the device when asked.
    public let pendingLoad: PendingLoad

    /// This rank's routed and kept counts (a host sync on a GPU if the layer made none).
    public var load: LoadStatistics { pendingLoad.statistics }
}

/// Moves tokens to the experts and back (MOE_SEMANTICS §2, §3), in named stages:
///
/// `dispatch`: 1. **permute** (device only): the routing plan and the gather of token rows into
/// expert order; 2. **count exchange** (device only, `TokenExchange.exchangeCounts`); 3. **the one
/// host download** of the layer: routed `[N]`, kept `[N]` and received `[W, E]` counts in one copy
/// (the all-to-all's message sizes must be known on the host); 4. **row exchange**
/// (`TokenExchange.dispatch`) and **grouping** by local expert.
///
/// When nothing crosses ranks (and the gate did not route a global batch, whose token counts step 3
/// checks), there is no download: the experts get all `T·k` permuted rows, grouped by the kept
/// counts where the plan left them on the device (`RowGroups`), and the load is read when someone
/// asks (`PendingLoad`). Then a GPU runs the layer without waiting for it, wherever the experts'
/// GEMMs run on our grouped kernel; one cuBLAS GEMM per expert needs the sizes and reads them.
///
/// `combine` mirrors it: **row exchange back** (`TokenExchange.combine`), then **unpermute**: the
/// weighted sum of each token's `k` expert outputs (`unpermuteTokens`).
/// ```swift
/// let dispatcher = TokenDispatcher(globalExpertCount: 8)
/// let dispatched = dispatcher.dispatch(tokens, routing: gate.route(tokens))
/// let out = dispatcher.combine(experts(dispatched.rows, groups: dispatched.groups), score: routing.score, dispatched)
/// ```
public final class TokenDispatcher: @unchecked Sendable {
    /// `N`.
    public let globalExpertCount: Int
    public let exchange: any TokenExchange

    /// A dispatcher over `exchange` (the local identity by default).
    public init(globalExpertCount: Int, exchange: (any TokenExchange)? = nil) {
        let exchange = exchange ?? LocalExchange(globalExpertCount: globalExpertCount)
        guarantee(exchange.rankCount * exchange.localExpertCount == globalExpertCount,
                  "TokenDispatcher: \(globalExpertCount) experts cannot be \(exchange.localExpertCount) on each of \(exchange.rankCount) ranks")
        self.globalExpertCount = globalExpertCount
        self.exchange = exchange
    }

    /// The rows of `x [T, d]` that `routing` keeps, on the ranks of their experts, expert-major.
    public func dispatch(_ x: Tensor, routing: GateOutput) -> DispatchedTokens {
        let n = globalExpertCount, w = exchange.rankCount, e = exchange.localExpertCount
        // 1. Permute: device work only.
        let plan = routing.plan ?? routingPlan(routing.expert, expertCount: n)
        let permuted = permuteTokens(x, by: plan)
        // 2. Count exchange: device work only.
        let received = exchange.exchangeCounts(plan.keptCounts)
        if received == nil && routing.batchTokenCounts == nil {
            // Nothing to exchange or check: no download (see above).
            let groups = ExpertGroups(grouping: RowGroups(counts: plan.keptCounts), expertOfRow: plan.expertOfRow)
            return DispatchedTokens(rows: permuted, groups: groups, plan: plan, layout: nil,
                                    pendingLoad: PendingLoad(counts: plan.counts, tokenCount: plan.tokenCount, topK: plan.topK))
        }
        // 3. The layer's one host sync: routed, kept and received counts (and the global batch's
        // token counts, to check the gate's assumption) in one download.
        let parts = [plan.counts.reshaped([2 * n])] + [received?.reshaped([w * e]), routing.batchTokenCounts].compactMap { $0 }
        let counts = (parts.count == 1 ? parts[0] : Tensor.concat(parts, axis: 0)).int32s().map(Int.init)
        let routed = Array(counts[0..<n]), kept = Array(counts[n..<(2 * n)])
        if let batch = routing.batchTokenCounts {
            let ranks = Array(counts.suffix(batch.count))
            guarantee(ranks.allSatisfy { $0 == plan.tokenCount },
                      "MoE layer: the ranks of the global batch hold \(ranks.map(String.init).joined(separator: ", ")) tokens; a gate "
                      + "that routes the global batch (capacity, random draws: GlobalBatchRouting.batchGroup) needs the same number "
                      + "on every rank, as the trainer's equal slices give. Pass equal batches, or set batchGroup to nil to route each rank's tokens alone")
        }
        let receivedPerExpert = received == nil
            ? [kept]
            : (0..<w).map { r in Array(counts[(2 * n + r * e)..<(2 * n + (r + 1) * e)]) }
        let sendCounts = (0..<w).map { r in kept[(r * e)..<((r + 1) * e)].reduce(0, +) }
        let layout = ExchangeLayout(sendCounts: sendCounts, receivedPerExpert: receivedPerExpert)
        // 4. Row exchange and grouping.
        let rows = exchange.dispatch(permuted.rows(0..<layout.rowsSent), layout)
        let sizes = layout.tokensPerLocalExpert
        let expertOfRow = received == nil
            ? plan.expertOfRow.rows(0..<layout.rowsSent)
            : Tensor(sizes.enumerated().flatMap { expert, rows in [Int32](repeating: Int32(expert), count: rows) }, device: x.device)
        return DispatchedTokens(rows: rows, groups: ExpertGroups(sizes: sizes, expertOfRow: expertOfRow), plan: plan, layout: layout,
                                pendingLoad: PendingLoad(LoadStatistics(routedCounts: routed, keptCounts: kept, tokenCount: plan.tokenCount,
                                                                        topK: plan.topK)))
    }

    /// `out[t] = Σ_j score[t, j] · y[slot (t, j)]` for expert outputs `y [S, d]` in dispatch order.
    public func combine(_ y: Tensor, score: Tensor, _ dispatched: DispatchedTokens) -> Tensor {
        unpermuteTokens(dispatched.layout.map { exchange.combine(y, $0) } ?? y, by: dispatched.plan, score: score)
    }
}
