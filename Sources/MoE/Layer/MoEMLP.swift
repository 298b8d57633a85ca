import NN
import Tensors

/// Which gate an `MoEMLP` (or `moefy`) builds; see each gate's type for its formulas.
public enum GateKind: Sendable, Equatable {
    /// `TopKGate` (FastMoE's `NaiveGate`).
    case topK
    /// `NoisyTopKGate`.
    case noisyTopK
    /// `GShardGate` (top-2).
    case gshard(trainingCapacityFactor: Double = 1.2, evalCapacityFactor: Double = 2.4, randomRouting: Bool = true)
    /// `SwitchGate` (top-1).
    case `switch`(trainingCapacityFactor: Double = 1.2, evalCapacityFactor: Double = 2.4, jitter: SwitchJitter = .input(epsilon: 0.01))
    /// `ZeroGate`.
    case zero

    /// Builds the gate; GShard needs `topK == 2` and Switch `topK == 1`.
    public func make(dModel: Int, experts: Int, topK: Int, zLossWeight: Double = 0,
                     dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) -> any Gate {
        switch self {
        case .topK:
            return TopKGate(dModel: dModel, expertCount: experts, topK: topK, zLossWeight: zLossWeight, dtype: dtype, device: device, generator: &generator)
        case .noisyTopK:
            return NoisyTopKGate(dModel: dModel, expertCount: experts, topK: topK, zLossWeight: zLossWeight, dtype: dtype, device: device, generator: &generator)
        case .gshard(let train, let eval, let random):
            guarantee(topK == 2, "GateKind.gshard: GShard routes to 2 experts, topK is \(topK)")
            return GShardGate(dModel: dModel, expertCount: experts, trainingCapacityFactor: train, evalCapacityFactor: eval,
                              randomRouting: random, zLossWeight: zLossWeight, dtype: dtype, device: device, generator: &generator)
        case .switch(let train, let eval, let jitter):
            guarantee(topK == 1, "GateKind.switch: Switch routes to 1 expert, topK is \(topK)")
            return SwitchGate(dModel: dModel, expertCount: experts, trainingCapacityFactor: train, evalCapacityFactor: eval,
                              jitter: jitter, zLossWeight: zLossWeight, dtype: dtype, device: device, generator: &generator)
        case .zero:
            return ZeroGate(expertCount: experts, topK: topK)
        }
    }
}

/// The standard Transformer MoE MLP (FastMoE's `FMoETransformerMLP`): a gate and `BatchedExperts`
/// `Linear(d→h) → GELU → Linear(h→d)`, both with bias.
/// ```swift
/// let mlp = MoEMLP(dModel: 512, hidden: 1024, experts: 8, topK: 2, gate: .topK,
///                  initialization: .megatron(layers: 12), generator: &g)
/// let y = mlp(x)   // x [batch, time, 512]
/// ```
public final class MoEMLP: MoELayer, @unchecked Sendable {
    public init(dModel: Int, hidden: Int, experts: Int, topK: Int = 2, gate: GateKind = .topK, zLossWeight: Double = 0,
                activation: ExpertActivation = .gelu, initialization: ExpertInitialization = .linearDefault,
                dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) {
        let router = gate.make(dModel: dModel, experts: experts, topK: topK, zLossWeight: zLossWeight, dtype: dtype, device: device, generator: &generator)
        let mlp = BatchedExperts(experts: experts, dModel: dModel, hidden: hidden, activation: activation,
                                 initialization: initialization, dtype: dtype, device: device, generator: &generator)
        super.init(dModel: dModel, gate: router, experts: mlp)
    }

    /// The batched experts (`experts` as its concrete type).
    public var batchedExperts: BatchedExperts { experts as! BatchedExperts }
}
