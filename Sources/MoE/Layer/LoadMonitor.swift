#if canImport(Glibc)
import Glibc
#endif
import NN
import Tensors

/// How the tokens of one forward spread over the experts (MOE_SEMANTICS §5), from the counts the
/// layer already downloaded for its group sizes (no second download).
public struct LoadStatistics: Sendable, Equatable, Codable {
    /// Slots routed to each expert, before capacity drops.
    public let countsBeforeDrop: [Int]
    /// Slots each expert computed (after drops).
    public let counts: [Int]
    /// `B` and `k` of the forward.
    public let tokens: Int
    public let topK: Int

    public init(countsBeforeDrop: [Int], counts: [Int], tokens: Int, topK: Int) {
        guarantee(countsBeforeDrop.count == counts.count, "LoadStatistics: \(countsBeforeDrop.count) routed counts, \(counts.count) kept")
        self.countsBeforeDrop = countsBeforeDrop
        self.counts = counts
        self.tokens = tokens
        self.topK = topK
    }

    public var expertCount: Int { counts.count }
    /// Slots the gate routed somewhere (`B·k` less any it routed nowhere).
    public var routedSlots: Int { countsBeforeDrop.reduce(0, +) }
    /// Slots the experts computed.
    public var keptSlots: Int { counts.reduce(0, +) }

    /// The fraction of routed slots dropped by capacity.
    public var droppedFraction: Double { routedSlots == 0 ? 0 : Double(routedSlots - keptSlots) / Double(routedSlots) }

    /// The busiest expert's routed slots over the mean (1 = perfectly balanced), before drops: the
    /// routing's balance, which capacity would otherwise hide.
    public var maxOverMean: Double {
        let mean = Double(routedSlots) / Double(max(expertCount, 1))
        return mean == 0 ? 0 : Double(countsBeforeDrop.max() ?? 0) / mean
    }

    /// Population standard deviation over mean of the routed counts (0 = balanced).
    public var coefficientOfVariation: Double {
        let n = Double(max(expertCount, 1)), mean = Double(routedSlots) / n
        guard mean > 0 else { return 0 }
        let variance = countsBeforeDrop.reduce(0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / n
        return variance.squareRoot() / mean
    }

    /// Entropy (nats) of the routed load distribution `count_e / Σ count`.
    public var entropy: Double {
        let total = Double(routedSlots)
        guard total > 0 else { return 0 }
        return countsBeforeDrop.reduce(0) { h, c in
            guard c > 0 else { return h }
            let p = Double(c) / total
            return h - p * Glibc.log(p)
        }
    }

    /// `entropy / log N`: 1 when every expert gets the same load, 0 when one gets everything.
    public var normalizedEntropy: Double { expertCount > 1 ? entropy / Glibc.log(Double(expertCount)) : 1 }
}

/// Collects the load of every MoE layer in a model after a forward, and sums it over steps (for
/// the report's expert-load heatmap).
/// ```swift
/// var monitor = LoadMonitor()
/// monitor.record(model)              // after each forward
/// for (name, s) in LoadMonitor.snapshot(model) { print(name, s.maxOverMean) }
/// ```
public struct LoadMonitor: Sendable {
    /// Routed slots per expert summed over the recorded steps, per layer name.
    public private(set) var totalCountsBeforeDrop: [String: [Int]] = [:]
    /// Kept slots per expert summed over the recorded steps, per layer name.
    public private(set) var totalCounts: [String: [Int]] = [:]
    public private(set) var steps = 0

    public init() {}

    /// Each MoE layer's statistics from its last forward, by module name.
    public static func snapshot(_ model: Module) -> [(name: String, statistics: LoadStatistics)] {
        MoEAuxiliaryLoss.providers(in: model).compactMap { entry in
            entry.provider.lastLoadStatistics.map { (entry.name, $0) }
        }
    }

    /// Adds the last forward's counts of every MoE layer to the totals.
    public mutating func record(_ model: Module) {
        for (name, s) in LoadMonitor.snapshot(model) {
            totalCountsBeforeDrop[name] = zip(totalCountsBeforeDrop[name] ?? Array(repeating: 0, count: s.expertCount), s.countsBeforeDrop).map(+)
            totalCounts[name] = zip(totalCounts[name] ?? Array(repeating: 0, count: s.expertCount), s.counts).map(+)
        }
        steps += 1
    }
}
