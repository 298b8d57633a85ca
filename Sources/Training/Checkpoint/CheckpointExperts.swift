import MoE
import NN

// Notation: N experts per MoE layer, W_ep ranks of an expert-parallel group, E = N / W_ep on each.

extension Checkpoint {
    /// Which of a layer's `N` experts a model holds: an expert-parallel rank's `E = N / W_ep`.
    public struct ExpertSlice: Sendable, Equatable {
        public let range: Range<Int>
        public let globalExpertCount: Int
        public init(range: Range<Int>, globalExpertCount: Int) {
            self.range = range
            self.globalExpertCount = globalExpertCount
        }
    }

    /// Throws, naming the tensor or expert list, when `file` holds another number of experts per layer
    /// than the model has in all (`slice`'s `N`, or on one rank its own): stacked expert tensors count
    /// them along their first axis, expert lists by the indices in their names (`ExpertListNames`).
    static func checkExpertCount(_ parameters: [(name: String, parameter: Parameter)], _ lists: ExpertListNames, file: SafeTensorsFile,
                                 slice: ExpertSlice?, path: String) throws {
        func refusal(_ what: String, saved: Int, expected: Int) -> CheckpointError {
            CheckpointError("\(path): \(what) holds \(saved) experts but this model has \(expected) per layer; "
                + "a checkpoint loads under another --expert-parallel but not with another number of experts — use --experts \(saved)")
        }
        for (name, p) in parameters where p.group == .expert && lists.expert(in: name) == nil {
            guard let e = file[name], let saved = e.shape.first, Array(e.shape.dropFirst()) == Array(p.shape.dropFirst()) else { continue }
            let expected = slice?.globalExpertCount ?? p.shape[0]
            if saved != expected { throw refusal("\(name) (shape \(e.shape))", saved: saved, expected: expected) }
        }
        func indices(_ names: [String]) -> [String: Set<Int>] {
            Dictionary(grouping: names.compactMap { lists.expert(in: $0) }, by: \.list).mapValues { Set($0.map(\.index)) }
        }
        let saved = indices(file.names), held = indices(parameters.map(\.name))
        for list in lists.prefixes {
            guard let n = saved[list]?.count, let expected = slice?.globalExpertCount ?? held[list]?.count, n != expected else { continue }
            throw refusal(list, saved: n, expected: expected)
        }
    }

    /// This rank's rows of a tensor of all `N` experts, for a parameter of `slice.range.count` experts.
    static func expertSlice(_ e: SafeTensorsEntry, _ slice: ExpertSlice, parameter p: Parameter, path: String) throws -> SafeTensorsEntry {
        let saved = e.shape.first ?? 0, total = slice.globalExpertCount, range = slice.range
        guard Array(e.shape.dropFirst()) == Array(p.shape.dropFirst()), saved == total, range.count == p.shape[0] else {
            throw CheckpointError("\(path): \(e.name) holds \(saved) experts (shape \(e.shape)) but this run has \(total) "
                + "(\(p.shape[0]) on each of its expert-parallel ranks, shape \(p.shape)); a checkpoint loads under another "
                + "--expert-parallel but not with another number of experts — use --experts \(saved)")
        }
        var sliced = e
        sliced.shape = [range.count] + e.shape.dropFirst()
        sliced.bytes = ExpertShards.slice(e, range)
        return sliced
    }
}
