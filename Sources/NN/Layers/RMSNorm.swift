import Tensors

/// Root-mean-square normalisation over the last axis (Zhang & Sennrich, 2019):
/// `y = x / sqrt(mean(x²) + eps) * weight`, with `weight` `[dimension]` starting at 1 and no bias.
///
/// Composed from tensor ops (square, mean, sqrt, reciprocal, broadcast multiplies), so its backward
/// comes from autograd; there is no fused primitive.
/// ```swift
/// let norm = RMSNorm(64)
/// let y = norm(x)   // x [B, T, 64]
/// ```
public final class RMSNorm: Module, Layer, @unchecked Sendable {
    public let weight: Parameter
    public let epsilon: Double

    public init(_ dimension: Int, epsilon: Double = 1e-6, device: Device = .cpu, dtype: DType = .float32) {
        weight = Parameter(Tensor.ones([dimension], dtype: dtype, device: device))
        self.epsilon = epsilon
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        guarantee(x.lastDimension == weight.shape[0],
                     "RMSNorm(\(weight.shape[0])): input \(x.shape) has last dimension \(x.lastDimension)")
        // [..., D] -> [...]: one inverse root per row, broadcast back over the row as a column.
        let inverseRMS = (x.squared().mean(axis: -1) + epsilon).sqrt().reciprocal()
        return x * inverseRMS * weight.value.cast(to: x.dtype)
    }
}
