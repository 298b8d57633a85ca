import Tensors

/// A module's own random generator (dropout masks, gate noise, random routing, jitter), in a box.
///
/// A module declares `let randomSource = RandomSource(...)` as it declares parameters, and the
/// module tree finds it by reflection (`Module.namedRandomSources()`), so a checkpoint saves and
/// restores every generator of a model with nothing to register: a new noisy module cannot
/// silently break exact resume.
/// ```swift
/// final class NoisyScale: Module, Layer, @unchecked Sendable {
///     let randomSource: RandomSource
///     init(generator: inout RandomGenerator) { randomSource = RandomSource(deriving: &generator) }
///     func callAsFunction(_ x: Tensor) -> Tensor {
///         x * Tensor.randomUniform(x.shape, low: 0.9, high: 1.1, generator: &randomSource.generator)
///     }
/// }
/// ```
public final class RandomSource: @unchecked Sendable {
    /// The current state; draws advance it.
    public var generator: RandomGenerator

    public init(_ generator: RandomGenerator) { self.generator = generator }

    /// A generator derived from `parent` (which advances by one draw), so every module of a model
    /// built from one seed has its own stream.
    public convenience init(deriving parent: inout RandomGenerator) {
        let s = parent.next()
        self.init(RandomGenerator(seed: RandomSource.mix(s.seed ^ RandomSource.mix(s.offset))))
    }

    /// SplitMix64's finaliser: spreads (seed, draw) pairs over distinct Philox keys.
    static func mix(_ z0: UInt64) -> UInt64 {
        var z = z0 &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension Module {
    /// Every random source in the tree, named by its module (`blocks.3.drop`), or by module and
    /// field where one module holds several; depth first.
    public func namedRandomSources() -> [(name: String, source: RandomSource)] {
        namedModules().flatMap { entry -> [(name: String, source: RandomSource)] in
            let own = entry.module.children().compactMap { field, child -> (String, RandomSource)? in
                if case .randomSource(let r) = child { return (field, r) }
                return nil
            }
            return own.map { field, r in
                (own.count == 1 ? entry.name : (entry.name.isEmpty ? field : "\(entry.name).\(field)"), r)
            }
        }
    }
}
