import Tensors

/// The Transformer's feed-forward network, as GPT-2 has it: `y = dropout(fc2(act(fc1(x))))`,
/// with `fc1: d → hidden` and `fc2: hidden → d`.
///
/// `initStd` gives `fc1` (and `fc2`, unless `outputInitStd` is set) normal weights and zero biases;
/// without it the Linear layers keep PyTorch's uniform init.
/// ```swift
/// var g = RandomGenerator(seed: 0)
/// let mlp = MLP(64, hidden: 256, initStd: 0.02, generator: &g)
/// let y = mlp(x)   // x [B, T, 64] -> [B, T, 64]
/// ```
public final class MLP: Module, Layer, @unchecked Sendable {
    public let fc1: Linear
    public let activation: Activation
    public let fc2: Linear
    public let dropout: Dropout

    public init(_ dimension: Int, hidden: Int, activation: Activation.Kind = .gelu(approximate: true),
                dropout p: Double = 0, initStd: Double? = nil, outputInitStd: Double? = nil,
                device: Device = .cpu, dtype: DType = .float32, generator: inout RandomGenerator) {
        fc1 = Linear(dimension, hidden, initStd: initStd, device: device, dtype: dtype, generator: &generator)
        self.activation = Activation(activation)
        fc2 = Linear(hidden, dimension, initStd: outputInitStd ?? initStd, device: device, dtype: dtype, generator: &generator)
        dropout = Dropout(p, generator: &generator)
    }

    /// With GELU(tanh), the activation cuBLASLt's epilogues compute, both layers run as one
    /// `geluFeedForward` (bias, GELU and their backward fused into the six GEMMs on CUDA); other
    /// activations compose the layers.
    public func callAsFunction(_ x: Tensor) -> Tensor {
        guard activation.kind == .gelu(approximate: true) else { return dropout(fc2(activation(fc1(x)))) }
        guarantee(x.lastDimension == fc1.inFeatures, "MLP(\(fc1.inFeatures), hidden: \(fc1.outFeatures)): input \(x.shape) has last dimension \(x.lastDimension)")
        let (w1, b1) = fc1.values(as: x.dtype), (w2, b2) = fc2.values(as: x.dtype)
        return dropout(geluFeedForward(x, weight1: w1, bias1: b1, weight2: w2, bias2: b2))
    }
}
