import Tensors

/// Reading and restoring every generator state of a model (its `RandomSource`s, found by
/// reflection), so a resumed run draws exactly what the uninterrupted run would.
/// ```swift
/// let saved = RandomStates.capture(model)                          // with the checkpoint
/// try RandomStates.restore(saved, into: model, source: "state.json")  // on resume
/// ```
public enum RandomStates {
    /// The current states, by name (`Module.namedRandomSources()`).
    public static func capture(_ model: Module) -> [String: RandomGenerator] {
        Dictionary(uniqueKeysWithValues: model.namedRandomSources().map { ($0.name, $0.source.generator) })
    }

    /// Restores `states` into `model`; every source of the model must have a saved state and every
    /// saved state a source. `source` names the file in messages.
    public static func restore(_ states: [String: RandomGenerator], into model: Module, source: String) throws {
        let sources = model.namedRandomSources()
        let names = Set(sources.map(\.name))
        if let missing = sources.first(where: { states[$0.name] == nil }) {
            throw RandomStateError("\(source): no generator state for module '\(missing.name)'; the checkpoint was written "
                + "for a different model (or by an older version) and cannot resume exactly")
        }
        if let extra = states.keys.sorted().first(where: { !names.contains($0) }) {
            throw RandomStateError("\(source): generator state for module '\(extra)', which this model does not have; "
                + "the checkpoint is from a different architecture")
        }
        for (name, s) in sources { s.generator = states[name]! }
    }
}

/// Saved generator states that do not fit the model.
public struct RandomStateError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
