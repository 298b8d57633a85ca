import Synchronization

// Notation: E groups (experts), S rows.

/// How expert-contiguous rows split into `E` groups, group `e` taking the next `sizes[e]` rows: the
/// grouping a grouped product runs over (`MoEBackend`, `groupedLinear`, `groupedFeedForward`).
///
/// The sizes live on the host, on the device, or both. A device grouping (the MoE layer's, from
/// the routing plan's counts) lets a backend that can read them where they are (our CUDA grouped
/// kernels) run without waiting for the device; `sizes` downloads them on first use, for the
/// paths that need host integers (one cuBLAS GEMM per expert, the CPU loops, `ExpertList`). The
/// rows past the groups (when `Σ sizes < S`: slots the routing dropped) are not computed, and
/// what a product writes there is unspecified.
/// ```swift
/// let groups = RowGroups(sizes: [3, 0, 5])                 // known on the host
/// let fromPlan = RowGroups(counts: plan.keptCounts)        // [E] int32 on the device, read when needed
/// ```
public final class RowGroups: @unchecked Sendable {
    /// `E`.
    public let count: Int
    /// `[E]` int32 on the rows' device, when the grouping came from there.
    public let deviceCounts: Tensor?
    private let state: Mutex<State>

    private struct State {
        var sizes: [Int]?
        var derived: [String: AnyObject] = [:]
    }

    /// A grouping known on the host.
    public init(sizes: [Int]) {
        guarantee(sizes.allSatisfy { $0 >= 0 }, "RowGroups: sizes \(sizes) must not be negative")
        count = sizes.count
        deviceCounts = nil
        state = Mutex(State(sizes: sizes))
    }

    /// A grouping whose sizes are `counts` (`[E]` int32), read from the device only when needed.
    public init(counts: Tensor) {
        guarantee(counts.dtype == .int32 && counts.rank == 1, "RowGroups: counts must be [E] int32, got \(counts.shape) \(counts.dtype)")
        count = counts.count
        deviceCounts = counts
        state = Mutex(State(sizes: nil))
    }

    /// The sizes, downloaded on first use when the grouping came from the device (a host sync there).
    public var sizes: [Int] {
        if let known = knownSizes { return known }
        let downloaded = deviceCounts!.int32s().map(Int.init)
        state.withLock { $0.sizes = downloaded }
        return downloaded
    }

    /// The sizes if the host has them, without waiting for the device.
    public var knownSizes: [Int]? { state.withLock { $0.sizes } }

    /// What a backend derives from this grouping (the CUDA kernels' tile table), made once per `key`
    /// and kept as long as the grouping: the products of one MoE layer share it.
    public func derived<Value: AnyObject>(_ key: String, _ make: () -> Value) -> Value {
        if let hit = state.withLock({ $0.derived[key] }) as? Value { return hit }
        let made = make()
        state.withLock { $0.derived[key] = made }
        return made
    }
}
