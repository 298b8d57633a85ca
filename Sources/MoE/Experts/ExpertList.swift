import NN
import Tensors

// Notation: E experts on this rank, S rows they compute, d model width.

/// Any layers as experts, one per expert, of any (mixed) types: FastMoE's `expert` list.
///
/// The generic path: each expert runs on its block of rows (a free view) and the results are
/// concatenated. Use `BatchedExperts` for the fast path of identical MLP experts. The experts'
/// parameters join the `.expert` group (`Parameter.group`) however they were made. Expert parallelism
/// keeps a rank's slice of the list (`MoELayer.sharded(over:)`), and checkpoints save each expert
/// under its global index (`ExpertListNames`).
/// ```swift
/// let experts = ExpertList((0..<4).map { _ in Linear(64, 64, generator: &g) })
/// ```
public final class ExpertList: Module, Experts, @unchecked Sendable {
    public let experts: [any Layer]

    public init(_ experts: [any Layer]) {
        guarantee(!experts.isEmpty, "ExpertList: needs at least one expert")
        for expert in experts {
            for p in expert.parameters() { p.group = .expert }
        }
        self.experts = experts
    }

    public var localExpertCount: Int { experts.count }

    public func callAsFunction(_ rows: Tensor, groups: ExpertGroups) -> Tensor {
        guarantee(groups.sizes.count == experts.count, "ExpertList: \(groups.sizes.count) group sizes for \(experts.count) experts")
        var outputs: [Tensor] = []
        for (e, (offset, size)) in zip(groups.offsets, groups.sizes).enumerated() where size > 0 {
            outputs.append(experts[e](rows.rows(offset..<(offset + size))))
        }
        if outputs.isEmpty { return rows }
        return outputs.count == 1 ? outputs[0] : Tensor.concat(outputs, axis: 0)
    }
}
