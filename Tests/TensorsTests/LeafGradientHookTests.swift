import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
@testable import Tensors

/// The "leaf gradient is final" hook data-parallel training starts its bucket all-reduces from.
@Suite("Leaf gradient hook")
struct LeafGradientHookTests {
    /// What the hook saw: leaves by name in call order, with a copy of each one's gradient then.
    final class Log {
        var names: [String] = []
        var gradients: [String: [Double]?] = [:]
    }

    /// `loss = Σ top · tanh(deep · x) + Σ twice · twice · x`: `top` is final after the first node
    /// backward visits, `deep` and `x` only at the end, `twice` after both of its uses.
    @Test func eachLeafIsReportedOnceWhenItsGradientIsFinal() {
        let x = Tensor([0.5, -1, 2] as [Double]).requiringGradient()
        let deep = Tensor([1.5, 0.25, -0.5] as [Double]).requiringGradient()
        let top = Tensor([2, 3, -1] as [Double]).requiringGradient()
        let twice = Tensor([0.3, -0.7, 1.1] as [Double]).requiringGradient()
        let names = [ObjectIdentifier(x): "x", ObjectIdentifier(deep): "deep", ObjectIdentifier(top): "top", ObjectIdentifier(twice): "twice"]
        let loss = (top * (deep * x).tanh()).sum() + (twice * twice * x).sum()
        let log = Log()
        withLeafGradientHook({ leaf in
            let name = names[ObjectIdentifier(leaf)]!
            log.names.append(name)
            log.gradients[name] = leaf.grad?.doubles()
        }) {
            loss.backward()
        }
        #expect(log.names.sorted() == ["deep", "top", "twice", "x"])
        // Reported early: when `top` was final, `deep` (deeper in the graph) had no gradient yet.
        #expect(log.names.firstIndex(of: "top")! < log.names.firstIndex(of: "deep")!)
        // The gradient seen by the hook is the final one, checked against the derivatives by hand.
        let xs = [0.5, -1, 2.0], ds = [1.5, 0.25, -0.5], ts = [2, 3, -1.0], ws = [0.3, -0.7, 1.1]
        let expected: [String: [Double]] = [
            "x": (0..<3).map { ts[$0] * (1 - tanhValue(ds[$0] * xs[$0]) * tanhValue(ds[$0] * xs[$0])) * ds[$0] + ws[$0] * ws[$0] },
            "deep": (0..<3).map { ts[$0] * (1 - tanhValue(ds[$0] * xs[$0]) * tanhValue(ds[$0] * xs[$0])) * xs[$0] },
            "top": (0..<3).map { tanhValue(ds[$0] * xs[$0]) },
            "twice": (0..<3).map { 2 * ws[$0] * xs[$0] },
        ]
        for (name, want) in expected {
            let seen = log.gradients[name]!!
            #expect(zip(seen, want).allSatisfy { abs($0 - $1) < 1e-12 }, "\(name): hook saw \(seen), expected \(want)")
        }
        #expect(x.grad!.doubles() == log.gradients["x"]!!)
    }

    /// A leaf behind a node that no gradient reaches is still reported (its `.grad` stays nil).
    @Test func leafBehindABlockedPathIsReportedWithoutGradient() {
        let used = Tensor([1, 2] as [Double]).requiringGradient()
        let blocked = Tensor([3, 4] as [Double]).requiringGradient()
        let middle = (blocked * 2).recording("opaque", [blocked]) { g in [g] }
        // This node passes no gradient to `middle`, so `middle`'s own rule never runs.
        let stopped = (middle * 1).recording("stop", [middle]) { _ in [nil] }
        let loss = (used * 3).sum() + stopped.sum()
        var reported: [ObjectIdentifier] = []
        withLeafGradientHook({ reported.append(ObjectIdentifier($0)) }) { loss.backward() }
        #expect(Set(reported) == [ObjectIdentifier(used), ObjectIdentifier(blocked)])
        #expect(reported.count == 2)
        #expect(blocked.grad == nil)
        #expect(used.grad?.doubles() == [3, 3])
    }

    /// The hook belongs to the thread that installed it, and only while its body runs.
    @Test func hookIsPerThreadAndScoped() {
        let calls = Mutex(0)
        @Sendable func step() {
            let w = Tensor([1, 2] as [Double]).requiringGradient()
            (w * w).sum().backward()
        }
        withLeafGradientHook({ _ in calls.withLock { $0 += 1 } }) {
            step()
            // async, not sync: dispatch_sync may run the block on the calling thread.
            let done = DispatchSemaphore(value: 0)
            DispatchQueue.global().async { step(); done.signal() }
            done.wait()
        }
        step()
        #expect(calls.withLock { $0 } == 1)
    }
}

/// tanh by its definition (a second computation, not the op under test).
private func tanhValue(_ x: Double) -> Double {
    let e = Glibc.exp(2 * x)
    return (e - 1) / (e + 1)
}
