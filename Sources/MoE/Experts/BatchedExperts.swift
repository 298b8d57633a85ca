import NN
import Tensors

// Notation: E experts on this rank, S rows they compute, d model width, h expert hidden width.

/// How `BatchedExperts` (and `MoEMLP`) initialise their weights.
public enum ExpertInitialization: Sendable, Equatable {
    /// Megatron's: weights N(0, std), the second weight N(0, std / √(2·layers)), biases 0.
    case megatron(std: Double = 0.02, layers: Int)
    /// `Linear`'s default (PyTorch's): weights and biases U(−1/√in, 1/√in) with `in` each layer's input width.
    case linearDefault
}

/// The activation between the two layers of an expert MLP.
public enum ExpertActivation: Sendable, Equatable {
    /// GELU, tanh approximation (GPT-2's; `Tensor.gelu()`'s default).
    case gelu
    /// GELU, exact erf form (PyTorch's `nn.GELU()` default, FastMoE's).
    case geluExact
    case relu
    case silu

    /// The elementwise op it is.
    var op: UnaryOp {
        switch self {
        case .gelu: .geluTanh
        case .geluExact: .geluErf
        case .relu: .relu
        case .silu: .silu
        }
    }
}

/// `E` identical MLP experts `Linear(d→h) → activation → Linear(h→d)` computed with grouped GEMMs
/// (FastMoE's `FMoETransformerMLP` experts): `fc1` `[E, h, d] + [E, h]`, `fc2` `[E, d, h] + [E, d]`.
/// ```swift
/// let experts = BatchedExperts(localExpertCount: 8, dModel: 512, hidden: 1024, initialization: .megatron(layers: 12), generator: &g)
/// ```
public final class BatchedExperts: Module, Experts, @unchecked Sendable {
    public let fc1: GroupedLinear
    public let fc2: GroupedLinear
    public let activation: ExpertActivation

    public init(localExpertCount experts: Int, dModel: Int, hidden: Int, activation: ExpertActivation = .gelu,
                initialization: ExpertInitialization = .linearDefault,
                dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) {
        func layer(_ inWidth: Int, _ outWidth: Int, std: Double?) -> GroupedLinear {
            if let std {
                return GroupedLinear(weight: Tensor.randomNormal([experts, outWidth, inWidth], std: std, dtype: dtype, device: device, generator: &generator),
                                     bias: Tensor.zeros([experts, outWidth], dtype: dtype, device: device))
            }
            let bound = 1 / Double(max(inWidth, 1)).squareRoot()
            return GroupedLinear(weight: Tensor.randomUniform([experts, outWidth, inWidth], low: -bound, high: bound, dtype: dtype, device: device, generator: &generator),
                                 bias: Tensor.randomUniform([experts, outWidth], low: -bound, high: bound, dtype: dtype, device: device, generator: &generator))
        }
        switch initialization {
        case .megatron(let std, let layers):
            fc1 = layer(dModel, hidden, std: std)
            fc2 = layer(hidden, dModel, std: std / (2 * Double(max(layers, 1))).squareRoot())
        case .linearDefault:
            fc1 = layer(dModel, hidden, std: nil)
            fc2 = layer(hidden, dModel, std: nil)
        }
        self.activation = activation
    }

    /// From given layers (e.g. copied weights).
    public init(fc1: GroupedLinear, fc2: GroupedLinear, activation: ExpertActivation = .gelu) {
        guarantee(fc1.localExpertCount == fc2.localExpertCount && fc1.outFeatures == fc2.inFeatures && fc2.outFeatures == fc1.inFeatures,
                     "BatchedExperts: fc1 [\(fc1.localExpertCount), \(fc1.outFeatures), \(fc1.inFeatures)] and fc2 [\(fc2.localExpertCount), \(fc2.outFeatures), \(fc2.inFeatures)] do not chain")
        self.fc1 = fc1
        self.fc2 = fc2
        self.activation = activation
    }

    public var localExpertCount: Int { fc1.localExpertCount }

    /// Both layers as one `groupedFeedForward` node: the biases and the activation ride on the
    /// grouped products' epilogues.
    public func callAsFunction(_ rows: Tensor, groups: ExpertGroups) -> Tensor {
        let dtype = rows.dtype
        return groupedFeedForward(rows, weight1: fc1.weight.value.cast(to: dtype), bias1: fc1.bias?.value.cast(to: dtype),
                                  weight2: fc2.weight.value.cast(to: dtype), bias2: fc2.bias?.value.cast(to: dtype),
                                  activation: activation.op, groups: groups.grouping, expertOfRow: groups.expertOfRow)
    }
}
