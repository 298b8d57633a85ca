import Distributed
import Synchronization
import Tensors

// Notation: N experts in all, E experts on this rank, W ranks of the expert-parallel group
// (N = W·E; global expert g lives on rank g / E as local expert g % E), d model width.

/// Experts spread over the ranks of an expert-parallel group (MOE_SEMANTICS §3, FastMoE's global
/// scatter and gather): every rank holds `E` of the `N` experts and sends each of its rows to the
/// rank that holds the row's expert.
///
/// - `exchangeCounts`: an all-to-all of `E` int32 per peer, on the device, so the layer's one host
///   download also brings the receive sizes.
/// - `dispatch`: an all-to-all-v of the rows (they leave in dispatch order, so grouped by destination
///   rank), arriving peer-major; one row permutation makes them expert-major, source-rank-minor, so
///   each local expert's rows are contiguous.
/// - `combine`: the mirror. Both are differentiable, each the other's backward.
///
/// With `W` data-parallel ranks an expert's gradient sums the contributions of every rank's tokens;
/// the data-parallel sync divides it as MOE_SEMANTICS §3's gradient convention says.
/// ```swift
/// let exchange = AllToAllExchange(group: expertGroup, localExpertCount: 2)
/// let layer = MoELayer(dModel: 64, gate: gate, experts: localExperts, exchange: exchange)
/// ```
public final class AllToAllExchange: TokenExchange, @unchecked Sendable {
    public let group: any ProcessGroup
    public let localExpertCount: Int
    /// The row orders of the last layout: `combine` reuses what `dispatch` built for the same
    /// forward (a host loop over the rows and two uploads) instead of building them again.
    private let lastOrder = Mutex<(layout: ExchangeLayout, order: ExpertMajorOrder)?>(nil)
    public var rankCount: Int { group.size }

    public init(group: any ProcessGroup, localExpertCount: Int) {
        guarantee(localExpertCount >= 1, "AllToAllExchange: \(localExpertCount) experts per rank; each rank needs at least one")
        self.group = group
        self.localExpertCount = localExpertCount
    }

    public func exchangeCounts(_ keptCounts: Tensor) -> Tensor? {
        let w = group.size, e = localExpertCount
        guarantee(keptCounts.count == w * e, "AllToAllExchange: \(keptCounts.count) kept counts for \(w) ranks × \(e) experts")
        let each = [Int](repeating: e, count: w)
        return group.allToAll(keptCounts.reshaped([w * e, 1]), sendCounts: each, receiveCounts: each).reshaped([w, e])
    }

    public func dispatch(_ rows: Tensor, _ layout: ExchangeLayout) -> Tensor {
        let arrived = exchangeRows(rows, send: layout.sendCounts, receive: layout.receiveCounts)
        let order = self.order(for: layout, device: rows.device)
        return permuteRows(arrived, order: order.expertMajor, inverse: order.peerMajor)
    }

    public func combine(_ rows: Tensor, _ layout: ExchangeLayout) -> Tensor {
        let order = self.order(for: layout, device: rows.device)
        let peerMajor = permuteRows(rows, order: order.peerMajor, inverse: order.expertMajor)
        return exchangeRows(peerMajor, send: layout.receiveCounts, receive: layout.sendCounts)
    }

    private func order(for layout: ExchangeLayout, device: Device) -> ExpertMajorOrder {
        lastOrder.withLock { last in
            if let last, last.layout == layout, last.order.expertMajor.device == device { return last.order }
            let order = ExpertMajorOrder(layout, device: device)
            last = (layout, order)
            return order
        }
    }

    /// The all-to-all-v as a differentiable op: the gradient travels back by the swapped counts.
    private func exchangeRows(_ x: Tensor, send: [Int], receive: [Int]) -> Tensor {
        let group = self.group
        let out = withoutGradient { group.allToAll(x, sendCounts: send, receiveCounts: receive) }
        return out.recording("allToAll", [x]) { g in [group.allToAll(g, sendCounts: receive, receiveCounts: send)] }
    }
}

/// The two row orders of received rows: peer-major (as the all-to-all delivers them: from rank 0
/// every local expert's rows, then from rank 1, ...) and expert-major (local expert 0's rows from
/// every rank, then expert 1's, ...). Built on the host from the downloaded counts.
struct ExpertMajorOrder {
    /// `[R]` int32: the peer-major row at each expert-major position (a gather index).
    let expertMajor: Tensor
    /// `[R]` int32: the inverse.
    let peerMajor: Tensor

    init(_ layout: ExchangeLayout, device: Device) {
        let counts = layout.receivedPerExpert, ranks = counts.count, experts = counts.first?.count ?? 0
        var start = [[Int]](repeating: [Int](repeating: 0, count: experts), count: ranks)
        var at = 0
        for w in 0..<ranks { for e in 0..<experts { start[w][e] = at; at += counts[w][e] } }
        var order = [Int32](), inverse = [Int32](repeating: 0, count: at)
        order.reserveCapacity(at)
        for e in 0..<experts {
            for w in 0..<ranks {
                for i in 0..<counts[w][e] {
                    inverse[start[w][e] + i] = Int32(order.count)
                    order.append(Int32(start[w][e] + i))
                }
            }
        }
        expertMajor = Tensor(order, shape: [at], device: device)
        peerMajor = Tensor(inverse, shape: [at], device: device)
    }
}
