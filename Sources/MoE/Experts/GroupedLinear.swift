import NN
import Tensors

// Notation: E experts on this rank, S rows they compute (expert-contiguous).

/// `E` linear layers applied to expert-contiguous rows with one grouped GEMM (FastMoE's `FMoELinear`):
/// `y_e = x_e W_eᵀ + b_e`. Weight `[E, out, in]` (each expert's matrix as `Linear` stores it), bias `[E, out]`.
/// Its parameters are in the `.expert` group.
/// ```swift
/// let fc = GroupedLinear(weight: Tensor.randomNormal([4, 256, 64], std: 0.02, generator: &g), bias: Tensor.zeros([4, 256]))
/// let y = fc(rows, groups: groups)   // rows [S, 64] -> [S, 256]
/// ```
public final class GroupedLinear: Module, @unchecked Sendable {
    public let weight: Parameter
    public let bias: Parameter?
    public let localExpertCount: Int
    public let inFeatures: Int
    public let outFeatures: Int

    /// From given values (`weight [E, out, in]`, `bias [E, out]`).
    public init(weight: Tensor, bias: Tensor?) {
        guarantee(weight.rank == 3, "GroupedLinear: weight must be [E, out, in], got \(weight.shape)")
        (localExpertCount, outFeatures, inFeatures) = (weight.shape[0], weight.shape[1], weight.shape[2])
        guarantee(bias.map { $0.shape == [weight.shape[0], weight.shape[1]] } ?? true,
                     "GroupedLinear: bias \(bias!.shape) must be [\(weight.shape[0]), \(weight.shape[1])]")
        self.weight = Parameter(weight, group: .expert)
        self.bias = bias.map { Parameter($0, group: .expert) }
    }

    public func callAsFunction(_ x: Tensor, groups: ExpertGroups) -> Tensor {
        let w = weight.value.cast(to: x.dtype)
        let b = bias?.value.cast(to: x.dtype)
        return groupedLinear(x, weight: w, bias: b, groups: groups.grouping, expertOfRow: groups.expertOfRow)
    }
}
