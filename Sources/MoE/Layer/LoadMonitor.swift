import NN
import Synchronization
import Tensors

// Notation: N experts in all, b a layer's routing bias [N].

/// One MoE layer's routing over a logging interval: its load, its routing bias (bias-balanced gates)
/// and, for expert choice, how far its training routing is from its evaluation routing.
public struct LayerRouting: Sendable {
    /// The layer's module name (`blocks.3.mlp`).
    public var name: String
    public var load: LoadStatistics
    /// `b` now, for a gate with `balance: .bias`.
    public var bias: [Double]?
    /// The mean over the interval's forwards of `GateOutput.routingDisagreement` (expert choice).
    public var routingDisagreement: Double?
}

/// The expert load of a model's MoE layers over an interval of training steps (MOE_SEMANTICS §5):
/// the one tracker the layers report to, so nothing walks the module tree per step.
///
/// `install(in:)` walks the model once and hands the monitor to every `MoELayer`; each training-mode
/// forward then adds its counts; the trainer reads `interval()` at each logging step and
/// `reset()`s. Evaluation-mode forwards are not counted. Counts a layer left on the device
/// (`PendingLoad`) are read when the monitor is: all the layers' of a step in one download.
///
/// It also keeps the counts of the current optimizer step, separately: `finishStep()` (after the
/// optimizer's step) moves each bias-balanced gate's bias towards balance with them
/// (`BiasBalancedGate.updateBias`). The bias update reads loads only from here, so an expert-parallel
/// run sums them over its ranks in this one place.
/// ```swift
/// let monitor = LoadMonitor.install(in: model)
/// // ... each training step: forward, backward, optimizer.step(), then:
/// monitor.finishStep()
/// for (name, load) in monitor.interval() { print(name, load.maxOverMean) }
/// monitor.reset()
/// ```
public final class LoadMonitor: @unchecked Sendable {
    /// The MoE layers' module names, in model order.
    public let layerNames: [String]
    /// Each layer's gate, when it balances by a routing bias.
    let biasedGates: [(any BiasBalancedGate)?]
    private struct Sums {
        var interval: [LoadStatistics?]
        var step: [LoadStatistics?]
        var disagreement: [(sum: Double, forwards: Int)]
        /// Loads recorded and not yet added to `interval` and `step`, by layer.
        var pending: [(index: Int, load: PendingLoad)] = []

        /// Adds the pending loads, downloading those still on the device together.
        mutating func settle() {
            guard !pending.isEmpty else { return }
            PendingLoad.resolveAll(pending.map(\.load))
            for (index, pendingLoad) in pending {
                let load = pendingLoad.statistics
                interval[index] = interval[index].map { $0.adding(load) } ?? load
                step[index] = step[index].map { $0.adding(load) } ?? load
            }
            pending = []
        }
    }
    private let sums: Mutex<Sums>

    init(layerNames: [String], biasedGates: [(any BiasBalancedGate)?]? = nil) {
        self.layerNames = layerNames
        self.biasedGates = biasedGates ?? Array(repeating: nil, count: layerNames.count)
        let none = [LoadStatistics?](repeating: nil, count: layerNames.count)
        sums = Mutex(Sums(interval: none, step: none, disagreement: Array(repeating: (0, 0), count: layerNames.count)))
    }

    /// A monitor for every `MoELayer` of `model` (replacing any earlier one).
    @discardableResult
    public static func install(in model: Module) -> LoadMonitor {
        let layers = model.namedModules().compactMap { entry in (entry.module as? MoELayer).map { (entry.name, $0) } }
        let biased = layers.map { _, layer -> (any BiasBalancedGate)? in
            guard let gate = layer.gate as? any BiasBalancedGate, gate.expertBias != nil else { return nil }
            return gate
        }
        let monitor = LoadMonitor(layerNames: layers.map(\.0), biasedGates: biased)
        for (index, (_, layer)) in layers.enumerated() { layer.loadMonitor = (monitor, index) }
        return monitor
    }

    func record(layer index: Int, _ load: PendingLoad, routingDisagreement: Double? = nil) {
        sums.withLock { s in
            s.pending.append((index, load))
            if let d = routingDisagreement { s.disagreement[index] = (s.disagreement[index].sum + d, s.disagreement[index].forwards + 1) }
        }
    }

    /// Each layer's counts summed since the last `reset`, by module name (layers that ran no
    /// training forward are left out).
    public func interval() -> [(name: String, load: LoadStatistics)] {
        sums.withLock { sums in
            sums.settle()
            return zip(layerNames, sums.interval).compactMap { name, s in s.map { (name, $0) } }
        }
    }

    /// `interval()` with each layer's routing bias (read from the device: call it at logging steps)
    /// and expert choice's train/eval routing disagreement.
    public func intervalRouting() -> [LayerRouting] {
        let (loads, disagreement) = sums.withLock { sums in
            sums.settle()
            return (sums.interval, sums.disagreement)
        }
        return layerNames.indices.compactMap { i in
            guard let load = loads[i] else { return nil }
            let d = disagreement[i]
            return LayerRouting(name: layerNames[i], load: load, bias: biasedGates[i]?.expertBias?.value.doubles(),
                                routingDisagreement: d.forwards > 0 ? d.sum / Double(d.forwards) : nil)
        }
    }

    /// Whether any layer balances by a routing bias (then call `finishStep()` after every optimizer step).
    public var hasRoutingBias: Bool { biasedGates.contains { $0 != nil } }

    /// Ends an optimizer step: with `updateBias` (the optimizer stepped), every bias-balanced layer's
    /// bias moves by `γ · sign(mean load − load_e)` with the step's routed counts; then the step's
    /// counts start again from zero. A layer that ran no training forward this step is left alone.
    /// `summing` combines the step's loads over data-parallel ranks (every rank calls it alike), so
    /// that replicas' biases move together.
    public func finishStep(updateBias: Bool = true,
                           summing: ([(name: String, load: LoadStatistics)]) -> [(name: String, load: LoadStatistics)] = { $0 }) {
        let step = sums.withLock { s -> [LoadStatistics?] in
            s.settle()
            let step = s.step
            s.step = Array(repeating: nil, count: layerNames.count)
            return step
        }
        guard updateBias, hasRoutingBias else { return }
        let present = zip(layerNames, step).compactMap { name, load in load.map { (name: name, load: $0) } }
        var global = Dictionary(uniqueKeysWithValues: summing(present).map { ($0.name, $0.load) })
        for (index, gate) in biasedGates.enumerated() {
            if let gate, let load = global.removeValue(forKey: layerNames[index]) { gate.updateBias(loads: load.routedCounts) }
        }
    }

    /// The bias step of a training step captured once and replayed (`updateBias(routed:skipUnlessFinite:)`):
    /// every bias-balanced layer's bias moves on the device with the routed counts its forwards
    /// since the last `finishStep` left there. Call it after the optimizer's step; then
    /// `finishStep(updateBias: false)`.
    public func updateBiasOnDevice(skipUnlessFinite squares: Tensor?) {
        let pending = sums.withLock { $0.pending }
        for (index, load) in pending {
            guard let gate = biasedGates[index] else { continue }
            guarantee(load.counts != nil, "LoadMonitor.updateBiasOnDevice: layer \(layerNames[index])'s load is on the host, not the device")
            gate.updateBias(routed: load.counts!.rows(0..<1).reshaped([-1]), skipUnlessFinite: squares)
        }
    }

    /// Takes the loads recorded since the last `finishStep` out of the monitor: the capture of a
    /// step, which ran nothing. Each replay of that step rewrites their counts in place; hand
    /// them back with `recordReplay(_:)` after it.
    public func takeCapturedLoads() -> CapturedLoads {
        CapturedLoads(layers: sums.withLock { s in
            defer { s.pending = [] }
            return s.pending.map { index, load in
                guarantee(load.counts != nil, "LoadMonitor.takeCapturedLoads: layer \(layerNames[index])'s load is on the host, not the device")
                return (index, load.counts!, load.tokenCount, load.topK)
            }
        })
    }

    /// Drops the loads recorded since the last `finishStep`: those of a capture that failed, whose
    /// work never ran.
    public func discardPendingLoads() {
        sums.withLock { $0.pending = [] }
    }

    /// Records the loads a replay of a captured step left on the device, as its forwards would have.
    public func recordReplay(_ loads: CapturedLoads) {
        for (index, counts, tokens, topK) in loads.layers {
            record(layer: index, PendingLoad(counts: counts, tokenCount: tokens, topK: topK))
        }
    }

    /// The counts still on the device of the loads recorded since the last `finishStep`, in one
    /// `[Σ 2N]` int32 tensor (nil when there are none): a captured step reads them back with its
    /// loss in one download and hands the values to `resolvePending(_:)`.
    public func pendingCounts() -> Tensor? {
        let counts = sums.withLock { $0.pending.compactMap { $0.load.isPending ? $0.load.counts?.reshaped([-1]) : nil } }
        return counts.isEmpty ? nil : Tensor.concat(counts, axis: 0)
    }

    /// Resolves the loads `pendingCounts()` covered from its downloaded values, in its order.
    public func resolvePending(_ counts: [Int]) {
        let loads = sums.withLock { $0.pending.map(\.load).filter { $0.isPending && $0.counts != nil } }
        guarantee(loads.reduce(0) { $0 + $1.counts!.count } == counts.count,
                  "LoadMonitor.resolvePending: \(counts.count) values for the pending loads' \(loads.reduce(0) { $0 + $1.counts!.count })")
        var at = 0
        for load in loads {
            load.resolve(Array(counts[at..<(at + load.counts!.count)]))
            at += load.counts!.count
        }
    }

    /// Starts a new interval.
    public func reset() {
        sums.withLock { s in
            s.settle()   // the current step's loads still move the routing biases
            s.interval = Array(repeating: nil, count: layerNames.count)
            s.disagreement = Array(repeating: (0, 0), count: layerNames.count)
        }
    }
}

/// The loads of a captured training step: each layer's `[2, N]` counts, rewritten by every replay.
public struct CapturedLoads: @unchecked Sendable {
    let layers: [(index: Int, counts: Tensor, tokenCount: Int, topK: Int)]
}

/// Notices MoE layers whose routing stays collapsed: max/mean load near its ceiling `N/k` (every
/// token to the same k experts) for `intervals` logging intervals in a row.
/// ```swift
/// var watch = CollapseWatch()
/// let collapsed = watch.observe(monitor.interval())   // names of the layers collapsed for 3 intervals now
/// ```
public struct CollapseWatch: Sendable {
    /// A layer counts as collapsed in an interval when max/mean ≥ `fraction · N/k`.
    public var fraction: Double
    /// Consecutive collapsed intervals before a layer is reported.
    public var intervals: Int
    private var streak: [String: Int] = [:]

    public init(fraction: Double = 0.9, intervals: Int = 3) {
        self.fraction = fraction
        self.intervals = intervals
    }

    /// Whether `load` is collapsed: max/mean ≥ `fraction · N/k`, where that ceiling is above 1.5 (with
    /// `N/k` near 1 even a balanced routing would pass the bar).
    public func isCollapsed(_ load: LoadStatistics) -> Bool {
        let ceiling = Double(load.globalExpertCount) / Double(max(load.topK, 1))
        return ceiling > 1.5 && load.maxOverMean >= fraction * ceiling
    }

    /// Records one interval; returns the layers (with their max/mean and ceiling) collapsed for
    /// `intervals` intervals or more.
    public mutating func observe(_ layers: [(name: String, load: LoadStatistics)])
        -> [(name: String, maxOverMean: Double, ceiling: Double)] {
        var out: [(name: String, maxOverMean: Double, ceiling: Double)] = []
        for (name, load) in layers {
            let n = isCollapsed(load) ? (streak[name] ?? 0) + 1 : 0
            streak[name] = n
            if n >= intervals {
                out.append((name, load.maxOverMean, Double(load.globalExpertCount) / Double(max(load.topK, 1))))
            }
        }
        return out
    }
}
