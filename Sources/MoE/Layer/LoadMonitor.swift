import NN
import Synchronization
import Tensors

// Notation: N experts in all.

/// The expert load of a model's MoE layers over an interval of training steps (MOE_SEMANTICS §5):
/// the one tracker the layers report to, so nothing walks the module tree per step.
///
/// `install(in:)` walks the model once and hands the monitor to every `MoELayer`; each training-mode
/// forward then adds its counts (from the layer's one download); the trainer reads `interval()` at
/// each logging step and `reset()`s. Evaluation-mode forwards are not counted.
/// ```swift
/// let monitor = LoadMonitor.install(in: model)
/// // ... training steps ...
/// for (name, load) in monitor.interval() { print(name, load.maxOverMean) }
/// monitor.reset()
/// ```
public final class LoadMonitor: Sendable {
    /// The MoE layers' module names, in model order.
    public let layerNames: [String]
    private let sums: Mutex<[LoadStatistics?]>

    init(layerNames: [String]) {
        self.layerNames = layerNames
        sums = Mutex(Array(repeating: nil, count: layerNames.count))
    }

    /// A monitor for every `MoELayer` of `model` (replacing any earlier one).
    @discardableResult
    public static func install(in model: Module) -> LoadMonitor {
        let layers = model.namedModules().compactMap { entry in (entry.module as? MoELayer).map { (entry.name, $0) } }
        let monitor = LoadMonitor(layerNames: layers.map(\.0))
        for (index, (_, layer)) in layers.enumerated() { layer.loadMonitor = (monitor, index) }
        return monitor
    }

    func record(layer index: Int, _ load: LoadStatistics) {
        sums.withLock { $0[index] = $0[index].map { $0.adding(load) } ?? load }
    }

    /// Each layer's counts summed since the last `reset`, by module name (layers that ran no
    /// training forward are left out).
    public func interval() -> [(name: String, load: LoadStatistics)] {
        sums.withLock { sums in zip(layerNames, sums).compactMap { name, s in s.map { (name, $0) } } }
    }

    /// Starts a new interval.
    public func reset() { sums.withLock { $0 = Array(repeating: nil, count: layerNames.count) } }
}
