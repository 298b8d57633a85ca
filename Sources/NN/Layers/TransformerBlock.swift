import Tensors

/// A pre-norm Transformer block (GPT-2): `x + attn(ln1(x))`, then `h + mlp(ln2(h))`.
///
/// `mlp` is any `Layer` mapping `[B, T, D]` to `[B, T, D]`, so the MoE target's `moefy` can replace
/// the dense MLP with a mixture-of-experts layer while every other name stays the same.
/// ```swift
/// var g = RandomGenerator(seed: 0)
/// let block = TransformerBlock(64, heads: 4, mlpHidden: 256, generator: &g)
/// let y = block(x)   // x [B, T, 64]
/// block.mlp = myMoELayer
/// ```
public final class TransformerBlock: Module, Layer, @unchecked Sendable {
    public let ln1: LayerNorm
    public let attn: CausalSelfAttention
    public let ln2: LayerNorm
    /// The feed-forward sublayer: a dense `MLP` at construction, replaceable by any `Layer`.
    public var mlp: any Layer

    /// - Parameters:
    ///   - initStd: normal init of every Linear weight (zero biases); nil keeps PyTorch's init.
    ///   - residualInitStd: the init of the two projections into the residual stream
    ///     (`attn.proj`, `mlp.fc2`); defaults to `initStd`.
    public init(_ dimension: Int, heads: Int, mlpHidden: Int, activation: Activation.Kind = .gelu(approximate: true),
                dropout: Double = 0, initStd: Double? = nil, residualInitStd: Double? = nil,
                device: Device = .cpu, dtype: DType = .float32, generator: inout RandomGenerator) {
        ln1 = LayerNorm(dimension, device: device, dtype: dtype)
        attn = CausalSelfAttention(dimension, heads: heads, dropout: dropout, initStd: initStd,
                                   projectionInitStd: residualInitStd, device: device, dtype: dtype, generator: &generator)
        ln2 = LayerNorm(dimension, device: device, dtype: dtype)
        mlp = MLP(dimension, hidden: mlpHidden, activation: activation, dropout: dropout, initStd: initStd,
                  outputInitStd: residualInitStd, device: device, dtype: dtype, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let h = x + attn(ln1(x))
        return h + mlp(ln2(h))
    }
}
