#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Tensors

// Notation: T tokens, N experts in all, k slots per token.

/// How the slots of one forward (or of several, summed) spread over the experts (MOE_SEMANTICS §5),
/// from the counts the layer already downloaded for its group sizes (no second download). The one
/// home of the load formulas: the metrics log and the progress line use these.
public struct LoadStatistics: Sendable, Equatable {
    /// `[N]`: slots routed to each expert, before capacity drops.
    public let routedCounts: [Int]
    /// `[N]`: slots each expert computed (after drops).
    public let keptCounts: [Int]
    /// `T` (summed over the forwards counted).
    public let tokenCount: Int
    /// `k`.
    public let topK: Int

    public init(routedCounts: [Int], keptCounts: [Int], tokenCount: Int, topK: Int) {
        guarantee(routedCounts.count == keptCounts.count, "LoadStatistics: \(routedCounts.count) routed counts, \(keptCounts.count) kept")
        self.routedCounts = routedCounts
        self.keptCounts = keptCounts
        self.tokenCount = tokenCount
        self.topK = topK
    }

    /// The counts of two forwards added up (an interval of training steps).
    public func adding(_ other: LoadStatistics) -> LoadStatistics {
        guarantee(other.routedCounts.count == routedCounts.count, "LoadStatistics.adding: \(other.routedCounts.count) experts, expected \(routedCounts.count)")
        return LoadStatistics(routedCounts: zip(routedCounts, other.routedCounts).map(+), keptCounts: zip(keptCounts, other.keptCounts).map(+),
                              tokenCount: tokenCount + other.tokenCount, topK: topK)
    }

    /// `N`.
    public var globalExpertCount: Int { keptCounts.count }
    /// Slots the gate routed somewhere (`T·k` less any it routed nowhere).
    public var routedSlots: Int { routedCounts.reduce(0, +) }
    /// Slots the experts computed.
    public var keptSlots: Int { keptCounts.reduce(0, +) }

    /// The fraction of routed slots dropped by capacity.
    public var droppedFraction: Double { routedSlots == 0 ? 0 : Double(routedSlots - keptSlots) / Double(routedSlots) }
    /// `maxOverMean(routedCounts)`: the routing's balance before drops, which capacity would hide.
    public var maxOverMean: Double { LoadStatistics.maxOverMean(routedCounts) }
    /// `coefficientOfVariation(routedCounts)`.
    public var coefficientOfVariation: Double { LoadStatistics.coefficientOfVariation(routedCounts) }
    /// `entropy(routedCounts)`.
    public var entropy: Double { LoadStatistics.entropy(routedCounts) }
    /// `entropy / log N`: 1 when every expert gets the same load, 0 when one gets everything.
    public var normalizedEntropy: Double { globalExpertCount > 1 ? entropy / Glibc.log(Double(globalExpertCount)) : 1 }

    /// The busiest expert's count over the mean count (1 = perfectly balanced); 0 when nothing was routed.
    public static func maxOverMean(_ counts: [Int]) -> Double {
        let total = counts.reduce(0, +)
        guard total > 0 else { return 0 }
        return Double(counts.max()!) * Double(counts.count) / Double(total)
    }

    /// Population standard deviation over mean of the counts (0 = balanced, or nothing routed).
    public static func coefficientOfVariation(_ counts: [Int]) -> Double {
        let n = Double(max(counts.count, 1)), mean = Double(counts.reduce(0, +)) / n
        guard mean > 0 else { return 0 }
        let variance = counts.reduce(0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / n
        return variance.squareRoot() / mean
    }

    /// Entropy (nats) of the distribution `count_e / Σ count` (log N = perfect balance; 0 when nothing was routed).
    public static func entropy(_ counts: [Int]) -> Double {
        let total = Double(counts.reduce(0, +))
        guard total > 0 else { return 0 }
        return counts.reduce(0) { h, c in
            guard c > 0 else { return h }
            let p = Double(c) / total
            return h - p * Glibc.log(p)
        }
    }
}

/// One forward's load, read from the device only when someone asks: the layer's routed and kept
/// counts stay where the routing plan put them, so a forward need not wait for them, and the
/// `LoadMonitor` reads all the layers' of a step in one download.
public final class PendingLoad: @unchecked Sendable {
    /// `[2, N]` int32: routed counts, then kept counts (`RoutingPlan.counts`); nil once known.
    let counts: Tensor?
    let tokenCount: Int, topK: Int
    private let known: Mutex<LoadStatistics?>

    /// A load the host knows already.
    public init(_ statistics: LoadStatistics) {
        (counts, tokenCount, topK) = (nil, statistics.tokenCount, statistics.topK)
        known = Mutex(statistics)
    }

    /// A load still on the device: `counts` `[2, N]` int32.
    public init(counts: Tensor, tokenCount: Int, topK: Int) {
        guarantee(counts.dtype == .int32 && counts.rank == 2 && counts.shape[0] == 2, "PendingLoad: counts must be [2, N] int32, got \(counts.shape) \(counts.dtype)")
        (self.counts, self.tokenCount, self.topK) = (counts, tokenCount, topK)
        known = Mutex(nil)
    }

    /// The statistics, downloaded on first use.
    public var statistics: LoadStatistics {
        if let hit = known.withLock({ $0 }) { return hit }
        return resolve(counts!.int32s().map(Int.init))
    }

    /// Whether `statistics` would wait for the device.
    var isPending: Bool { known.withLock { $0 == nil } }

    /// Sets the statistics from the downloaded `[2·N]` counts.
    @discardableResult
    func resolve(_ values: [Int]) -> LoadStatistics {
        let n = values.count / 2
        let statistics = LoadStatistics(routedCounts: Array(values[0..<n]), keptCounts: Array(values[n...]), tokenCount: tokenCount, topK: topK)
        known.withLock { $0 = statistics }
        return statistics
    }

    /// Resolves every pending load of `loads` with one download per device.
    static func resolveAll(_ loads: [PendingLoad]) {
        let pending = loads.filter(\.isPending)
        for device in Set(pending.map { $0.counts!.device }) {
            let group = pending.filter { $0.counts!.device == device }
            let values = Tensor.concat(group.map { $0.counts!.reshaped([-1]) }, axis: 0).int32s().map(Int.init)
            var at = 0
            for load in group {
                let n = load.counts!.count
                load.resolve(Array(values[at..<(at + n)]))
                at += n
            }
        }
    }
}
