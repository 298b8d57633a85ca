import MoE
import NN
import Tensors

/// A module that draws random numbers during training from a generator it owns (dropout masks,
/// noisy-gate noise, GShard's random routing, Switch jitter). A checkpoint saves every such
/// generator's state by module name, so a resumed run draws exactly what the uninterrupted run would.
public protocol RandomStateHolder: AnyObject {
    var generator: RandomGenerator { get set }
}

extension Dropout: RandomStateHolder {}
extension NoisyTopKGate: RandomStateHolder {}
extension GShardGate: RandomStateHolder {}
extension SwitchGate: RandomStateHolder {}

/// Reading and restoring the generator states of a model.
public enum RandomStates {
    /// Every module of `model` that owns a generator, by its dotted module name, depth first.
    public static func holders(in model: Module) -> [(name: String, holder: any RandomStateHolder)] {
        model.namedModules().compactMap { entry in (entry.module as? any RandomStateHolder).map { (entry.name, $0) } }
    }

    /// The current states, by module name.
    public static func capture(_ model: Module) -> [String: RandomGenerator] {
        Dictionary(uniqueKeysWithValues: holders(in: model).map { ($0.name, $0.holder.generator) })
    }

    /// Restores `states` into `model`; every generator of the model must have a saved state.
    /// `source` names the file in messages.
    public static func restore(_ states: [String: RandomGenerator], into model: Module, source: String) throws {
        let holders = holders(in: model)
        let names = Set(holders.map(\.name))
        if let missing = holders.first(where: { states[$0.name] == nil }) {
            throw CheckpointError("\(source): no generator state for module '\(missing.name)'; the checkpoint was written "
                + "for a different model (or by an older version) and cannot resume exactly")
        }
        if let extra = states.keys.sorted().first(where: { !names.contains($0) }) {
            throw CheckpointError("\(source): generator state for module '\(extra)', which this model does not have; "
                + "the checkpoint is from a different architecture")
        }
        for (name, holder) in holders { holder.generator = states[name]! }
    }
}
