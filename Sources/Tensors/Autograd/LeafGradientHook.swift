// "This leaf's gradient is final": the one autograd hook, for data-parallel training, which starts
// the all-reduce of a bucket of gradients while backward is still computing the rest (as PyTorch's
// DDP does with its per-parameter hooks).
//
// Per thread, like grad mode: thread ranks of a test each run their own backward with their own
// callback. `backward()` counts, during its topological pass, how many graph edges lead into each
// leaf; after a node's backward rule has added its contributions it releases its edges, and a leaf
// whose count reaches zero will receive nothing more in this backward: the callback gets it then.
// Without a callback installed nothing is counted.

/// A per-thread callback that `backward()` calls once per leaf (a tensor that requires a gradient
/// and has no recorded op: a parameter) as soon as the leaf's `.grad` will receive no more
/// contributions in that backward.
///
/// Leaves the backward does not reach are not reported. A leaf reached only through nodes that got no
/// gradient is reported with its `.grad` unchanged (possibly nil).
/// ```swift
/// withLeafGradientHook({ leaf in bucket.markReady(leaf) }) {
///     loss.backward()
/// }
/// ```
public func withLeafGradientHook<R>(_ hook: @escaping (Tensor) -> Void, _ body: () throws -> R) rethrows -> R {
    let previous = LeafGradientHook.current
    LeafGradientHook.set(LeafGradientHook(hook))
    defer { LeafGradientHook.set(previous) }
    return try body()
}

/// The installed callback of this thread (a class so one pointer holds it in thread-local storage).
final class LeafGradientHook {
    let call: (Tensor) -> Void

    init(_ call: @escaping (Tensor) -> Void) { self.call = call }

    private static let slot = ThreadLocalSlot<LeafGradientHook>()

    /// The calling thread's hook, or nil.
    static var current: LeafGradientHook? { slot.value }

    /// Installs `hook` on the calling thread.
    static func set(_ hook: LeafGradientHook?) { slot.value = hook }
}

/// Remaining graph edges into each leaf during one backward.
struct LeafUses {
    private var remaining: [ObjectIdentifier: Int] = [:]
    let hook: LeafGradientHook

    /// Counts the leaf inputs of every node backward will visit.
    init(nodes: [Tensor], hook: LeafGradientHook) {
        self.hook = hook
        for t in nodes {
            for input in t.gradFunction?.inputs ?? [] where input.requiresGrad && input.gradFunction == nil {
                remaining[ObjectIdentifier(input), default: 0] += 1
            }
        }
    }

    /// A node's backward has run (or was skipped: no gradient reached it): its edges are used up.
    mutating func release(_ inputs: [Tensor]) {
        for input in inputs where input.requiresGrad && input.gradFunction == nil {
            let id = ObjectIdentifier(input)
            guard let n = remaining[id] else { continue }
            if n == 1 {
                remaining[id] = nil
                hook.call(input)
            } else {
                remaining[id] = n - 1
            }
        }
    }
}
