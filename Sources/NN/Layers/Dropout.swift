import Tensors

/// Inverted dropout as a layer: in training mode zeroes each element with probability `p` and
/// scales the rest by `1/(1-p)`; in evaluation mode (or with `p == 0`) it returns its input.
///
/// Each `Dropout` owns its random generator (a `RandomSource`), which advances once per call in
/// training. The state is two integers (`generator`); checkpoints save it with every other random
/// source of the model (`Module.namedRandomSources()`) to resume a run exactly.
/// ```swift
/// var g = RandomGenerator(seed: 1)
/// let drop = Dropout(0.1, generator: &g)
/// let y = drop(x)
/// let saved = drop.generator        // store with the checkpoint
/// drop.generator = saved            // on resume
/// ```
public final class Dropout: Module, Layer, @unchecked Sendable {
    public let p: Double
    /// The source of the masks.
    public let randomSource: RandomSource
    /// The generator the masks come from; settable to restore a saved state.
    public var generator: RandomGenerator {
        get { randomSource.generator }
        set { randomSource.generator = newValue }
    }

    /// A dropout whose generator is derived from `generator` (which advances by one draw), so
    /// every dropout of a model built from one seed has its own stream.
    public init(_ p: Double, generator: inout RandomGenerator) {
        guarantee(p >= 0 && p < 1, "Dropout: p = \(p) must be in [0, 1)")
        self.p = p
        randomSource = RandomSource(deriving: &generator)
    }

    /// A dropout with an explicit generator state.
    public init(_ p: Double, state: RandomGenerator) {
        guarantee(p >= 0 && p < 1, "Dropout: p = \(p) must be in [0, 1)")
        self.p = p
        randomSource = RandomSource(state)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        dropout(x, p: p, training: isTraining, generator: &randomSource.generator)
    }
}

extension Module {
    /// Every `Dropout` in the tree with its dotted module name, for saving and restoring their
    /// generator states (`dropout.generator`) alongside a checkpoint.
    public func namedDropouts() -> [(name: String, dropout: Dropout)] {
        namedModules().compactMap { entry in (entry.module as? Dropout).map { (entry.name, $0) } }
    }
}
