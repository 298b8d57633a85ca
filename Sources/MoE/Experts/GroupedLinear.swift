import NN
import Tensors

/// `E` linear layers applied to expert-contiguous rows with one grouped GEMM (FastMoE's `FMoELinear`):
/// `y_e = x_e W_eᵀ + b_e`. Weight `[E, out, in]` (each expert's matrix as `Linear` stores it), bias `[E, out]`.
/// ```swift
/// let fc = GroupedLinear(experts: 4, 64, 256, weight: w, bias: b)
/// let y = fc(rows, groups: groups)
/// ```
public final class GroupedLinear: Module, @unchecked Sendable {
    public let weight: Parameter
    public let bias: Parameter?
    public let expertCount: Int
    public let inFeatures: Int
    public let outFeatures: Int

    /// From given values (`weight [E, out, in]`, `bias [E, out]`).
    public init(weight: Tensor, bias: Tensor?) {
        guarantee(weight.rank == 3, "GroupedLinear: weight must be [E, out, in], got \(weight.shape)")
        (expertCount, outFeatures, inFeatures) = (weight.shape[0], weight.shape[1], weight.shape[2])
        guarantee(bias.map { $0.shape == [weight.shape[0], weight.shape[1]] } ?? true,
                     "GroupedLinear: bias \(bias!.shape) must be [\(weight.shape[0]), \(weight.shape[1])]")
        self.weight = Parameter(weight)
        self.bias = bias.map(Parameter.init)
    }

    public func callAsFunction(_ x: Tensor, groups: ExpertGroups) -> Tensor {
        let w = weight.value.dtype == x.dtype ? weight.value : weight.value.cast(to: x.dtype)
        let b = bias.map { $0.value.dtype == x.dtype ? $0.value : $0.value.cast(to: x.dtype) }
        return groupedLinear(x, weight: w, bias: b, groupSizes: groups.sizes, expertOfRow: groups.expertOfRow)
    }
}
