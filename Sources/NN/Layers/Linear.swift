import Tensors

/// `y = x Wᵀ + b`, with `W` stored `[out, in]` as in PyTorch (so checkpoints map one to one).
/// Inputs of any leading shape `[..., in]`.
///
/// Default init is PyTorch's: `W, b ~ U(-1/√in, 1/√in)`. GPT-style models re-initialise with
/// `Linear(…, initStd: 0.02)` (normal weights, zero bias).
public final class Linear: Module, Layer, @unchecked Sendable {
    public let weight: Parameter
    public let bias: Parameter?
    public let inFeatures: Int
    public let outFeatures: Int

    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, initStd: Double? = nil,
                device: Device = .cpu, dtype: DType = .float32, generator: inout RandomGenerator) {
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        if let std = initStd {
            weight = Parameter(Tensor.randomNormal([outFeatures, inFeatures], std: std, dtype: dtype, device: device, generator: &generator))
            self.bias = bias ? Parameter(Tensor.zeros([outFeatures], dtype: dtype, device: device)) : nil
        } else {
            let bound = 1 / Double(max(inFeatures, 1)).squareRoot()
            weight = Parameter(Tensor.randomUniform([outFeatures, inFeatures], low: -bound, high: bound, dtype: dtype, device: device, generator: &generator))
            self.bias = bias
                ? Parameter(Tensor.randomUniform([outFeatures], low: -bound, high: bound, dtype: dtype, device: device, generator: &generator))
                : nil
        }
    }

    /// `x Wᵀ + b` as one op, whose bias rides on the GEMM (a cuBLASLt epilogue on CUDA).
    public func callAsFunction(_ x: Tensor) -> Tensor {
        guarantee(x.lastDimension == inFeatures, "Linear(\(inFeatures)→\(outFeatures)): input \(x.shape) has last dimension \(x.lastDimension)")
        let (w, b) = values(as: x.dtype)
        return linear(x, weight: w, bias: b)
    }

    /// The weight and bias in `dtype`: a recorded cast, as mixed precision keeps float32 parameters.
    func values(as dtype: DType) -> (weight: Tensor, bias: Tensor?) {
        (weight.value.cast(to: dtype), bias?.value.cast(to: dtype))
    }
}
