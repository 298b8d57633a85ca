import Tensors

/// Layer normalisation over the last axis: `(x - mean) / sqrt(var + eps) * weight + bias`.
///
/// `weight` starts at 1 and `bias` at 0, both `[dimension]`. The affine parameters are cast to the
/// input's dtype, so float32 master weights serve bfloat16 activations.
/// ```swift
/// let ln = LayerNorm(64)
/// let y = ln(x)   // x [B, T, 64]
/// ```
public final class LayerNorm: Module, Layer, @unchecked Sendable {
    public let weight: Parameter
    public let bias: Parameter
    public let epsilon: Float

    public init(_ dimension: Int, epsilon: Float = 1e-5, device: Device = .cpu, dtype: DType = .float32) {
        weight = Parameter(Tensor.ones([dimension], dtype: dtype, device: device))
        bias = Parameter(Tensor.zeros([dimension], dtype: dtype, device: device))
        self.epsilon = epsilon
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        guarantee(x.lastDimension == weight.shape[0],
                     "LayerNorm(\(weight.shape[0])): input \(x.shape) has last dimension \(x.lastDimension)")
        return layerNorm(x, weight: weight.value.cast(to: x.dtype), bias: bias.value.cast(to: x.dtype), epsilon: epsilon)
    }
}
