import Tensors

/// Inverted dropout as a layer: in training mode zeroes each element with probability `p` and
/// scales the rest by `1/(1-p)`; in evaluation mode (or with `p == 0`) it returns its input.
///
/// Each `Dropout` owns its random generator, which advances once per call in training. The state is
/// two integers (`generator`); save it with a checkpoint and restore it to resume a run exactly
/// (`Module.namedDropouts()` lists every dropout of a model by name).
/// ```swift
/// var g = RandomGenerator(seed: 1)
/// let drop = Dropout(0.1, generator: &g)
/// let y = drop(x)
/// let saved = drop.generator        // store with the checkpoint
/// drop.generator = saved            // on resume
/// ```
public final class Dropout: Module, Layer, @unchecked Sendable {
    public let p: Double
    /// The generator the masks come from; settable to restore a saved state.
    public var generator: RandomGenerator

    /// A dropout whose generator is derived from `generator` (which advances by one draw), so
    /// every dropout of a model built from one seed has its own stream.
    public init(_ p: Double, generator: inout RandomGenerator) {
        guarantee(p >= 0 && p < 1, "Dropout: p = \(p) must be in [0, 1)")
        self.p = p
        let s = generator.next()
        self.generator = RandomGenerator(seed: Dropout.mix(s.seed ^ Dropout.mix(s.offset)))
    }

    /// A dropout with an explicit generator state.
    public init(_ p: Double, state: RandomGenerator) {
        guarantee(p >= 0 && p < 1, "Dropout: p = \(p) must be in [0, 1)")
        self.p = p
        generator = state
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        dropout(x, p: p, training: isTraining, generator: &generator)
    }

    /// SplitMix64's finaliser: spreads (seed, draw) pairs over distinct Philox keys.
    private static func mix(_ z0: UInt64) -> UInt64 {
        var z = z0 &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension Module {
    /// Every `Dropout` in the tree with its dotted module name, for saving and restoring their
    /// generator states (`dropout.generator`) alongside a checkpoint.
    public func namedDropouts() -> [(name: String, dropout: Dropout)] {
        namedModules().compactMap { entry in (entry.module as? Dropout).map { (entry.name, $0) } }
    }
}
