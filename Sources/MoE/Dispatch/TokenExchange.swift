import Tensors

// Notation: T tokens on this rank, d model width, N experts in all, E experts on this rank, W ranks
// of the expert-parallel group (N = W·E), S rows this rank's experts compute.

/// How rows cross the ranks of one layer's forward, from the host counts of the layer's one download.
public struct ExchangeLayout: Sendable, Equatable {
    /// `[W]`: rows this rank sends to each rank (its kept counts summed over that rank's experts).
    public let sendCounts: [Int]
    /// `[W]`: rows this rank receives from each rank.
    public let receiveCounts: [Int]
    /// `[W][E]`: rows rank `w` sends to this rank's local expert `e`.
    public let receivedPerExpert: [[Int]]

    public init(sendCounts: [Int], receivedPerExpert: [[Int]]) {
        self.sendCounts = sendCounts
        self.receivedPerExpert = receivedPerExpert
        receiveCounts = receivedPerExpert.map { $0.reduce(0, +) }
    }

    /// `[E]`: rows per local expert, `Σ_w receivedPerExpert[w][e]` (the grouped GEMM's problem sizes).
    public var tokensPerLocalExpert: [Int] {
        guard let first = receivedPerExpert.first else { return [] }
        return receivedPerExpert.dropFirst().reduce(first) { zip($0, $1).map(+) }
    }

    /// Rows this rank sends (its kept slots) and receives (its experts' rows, `S`); the mirror
    /// exchange of `combine` moves them the other way.
    public var rowsSent: Int { sendCounts.reduce(0, +) }
    public var rowsReceived: Int { receiveCounts.reduce(0, +) }
}

/// Moves expert-ordered rows to the ranks that hold their experts and back: the expert-parallel seam
/// (MOE_SEMANTICS §3). The dispatcher calls it in two stages around the layer's one host download:
/// 1. `exchangeCounts` (device only, before the download): this rank's kept counts `[N]` in, the
///    counts its experts will receive `[W, E]` out (an all-to-all of `E` integers per peer);
/// 2. `dispatch` / `combine` (after the download, which gave the message sizes): all-to-all-v of the
///    rows, into the expert-major, source-rank-minor layout, and the mirror back into dispatch order.
/// Both row stages are differentiable; the backward of each is the other.
/// ```swift
/// let dispatcher = TokenDispatcher(globalExpertCount: 8, exchange: LocalExchange(globalExpertCount: 8))
/// ```
public protocol TokenExchange: AnyObject, Sendable {
    /// `W`: the ranks of the expert-parallel group.
    var rankCount: Int { get }
    /// `E`: the experts on this rank.
    var localExpertCount: Int { get }
    /// Device stage: the counts this rank's experts receive, `[W, E]` int32 (row `w`: from rank `w`),
    /// from this rank's `keptCounts [N]`; nil when nothing crosses ranks (the received counts are the
    /// kept counts). Must not wait for the device: the layer downloads the result with the plan's counts.
    func exchangeCounts(_ keptCounts: Tensor) -> Tensor?
    /// Rows `[layout.rowsSent, d]` in dispatch order (by global expert, so by destination rank) →
    /// rows `[layout.rowsReceived, d]`, expert-major and source-rank-minor.
    func dispatch(_ rows: Tensor, _ layout: ExchangeLayout) -> Tensor
    /// The mirror of `dispatch`: expert outputs `[layout.rowsReceived, d]` → `[layout.rowsSent, d]`
    /// in dispatch order.
    func combine(_ rows: Tensor, _ layout: ExchangeLayout) -> Tensor
}

/// The exchange of a layer whose experts are all on this rank (`W = 1`): the identity.
public final class LocalExchange: TokenExchange, @unchecked Sendable {
    public let localExpertCount: Int
    public var rankCount: Int { 1 }

    public init(globalExpertCount: Int) { localExpertCount = globalExpertCount }

    public func exchangeCounts(_ keptCounts: Tensor) -> Tensor? { nil }
    public func dispatch(_ rows: Tensor, _ layout: ExchangeLayout) -> Tensor { rows }
    public func combine(_ rows: Tensor, _ layout: ExchangeLayout) -> Tensor { rows }
}
