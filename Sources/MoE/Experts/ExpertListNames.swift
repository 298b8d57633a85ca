import NN
import Tensors

// Notation: N experts of a layer, W ranks of its expert-parallel group, E = N / W on each; group rank
// r holds global experts r·E ..< (r+1)·E as its local experts 0 ..< E.

/// Where the expert index sits in the tensor names of `ExpertList` experts, and the one mapping between
/// the index an expert-parallel rank gives an expert and its global index.
///
/// `Module` names an `ExpertList`'s expert `i` by its place in the list's `experts` array: expert 3 of
/// the list at `blocks.0.mlp.experts` owns `blocks.0.mlp.experts.experts.3.fc1.weight`. A rank that
/// keeps global experts `first ..< first + E` of a sharded layer (`MoELayer.sharded(over:)`) numbers
/// them `0 ..< E`; checkpoints save them under `first + i`, the names a one-rank model of all `N`
/// has, so a file reads under any layout. `BatchedExperts` need no renaming: their tensors stack the
/// experts along the first axis.
/// ```swift
/// let lists = ExpertListNames(model)     // rank 1 of 2 over 8 experts: experts 4 ..< 8 as 0 ..< 4
/// let saved = lists.renumbered("blocks.0.mlp.experts.experts.3.fc1.weight", by: 4)   // "blocks.0.mlp.experts.experts.7.fc1.weight"
/// ```
public struct ExpertListNames: Sendable, Equatable {
    /// The name prefix of each list's experts, which an expert index follows (`blocks.0.mlp.experts.experts`).
    public let prefixes: [String]

    public init(prefixes: [String]) { self.prefixes = prefixes }

    /// The prefixes of `model`'s expert lists.
    public init(_ model: Module) {
        prefixes = model.namedModules().compactMap { entry in
            guard entry.module is ExpertList else { return nil }
            return entry.name.isEmpty ? "experts" : entry.name + ".experts"   // ExpertList's array field
        }
    }

    /// The list and the expert index of `name` (a parameter or buffer name, or an optimizer state
    /// entry `<kind>.<parameter name>` such as `exp_avg.blocks.0.mlp.experts.experts.3.fc1.weight`);
    /// nil for a tensor outside every list.
    public func expert(in name: String) -> (list: String, index: Int)? {
        locate(name).map { ($0.list, $0.index) }
    }

    /// `name` with its expert index moved by `offset`: `+first` from a rank's index to the global one,
    /// `−first` back. Names outside every list come back unchanged.
    public func renumbered(_ name: String, by offset: Int) -> String {
        guard let found = locate(name) else { return name }
        let index = found.index + offset
        guarantee(index >= 0, "ExpertListNames: renumbering \(name) by \(offset) gives expert \(index)")
        var renamed = name
        renamed.replaceSubrange(found.range, with: String(index))
        return renamed
    }

    private func locate(_ name: String) -> (list: String, index: Int, range: Range<String.Index>)? {
        if let found = locate(name[...]) { return found }
        // Optimizer state: the parameter's name follows the state's kind.
        guard let dot = name.firstIndex(of: ".") else { return nil }
        return locate(name[name.index(after: dot)...])
    }

    private func locate(_ name: Substring) -> (list: String, index: Int, range: Range<String.Index>)? {
        for prefix in prefixes where name.hasPrefix(prefix + ".") {
            let start = name.index(name.startIndex, offsetBy: prefix.count + 1)
            let end = name[start...].firstIndex(of: ".") ?? name.endIndex
            if let index = Int(name[start..<end]), index >= 0 { return (prefix, index, start..<end) }
        }
        return nil
    }
}
