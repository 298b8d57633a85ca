import Tensors

/// Multi-head causal self-attention with a fused query/key/value projection (GPT-2's layout).
///
/// Shapes, with `H` heads of width `hd = D / H`:
/// ```text
/// x [B, T, D] → qkv [B, T, 3D] → q, k, v [B, T, D] → heads [B·H, T, hd]
/// scores = q kᵀ / √hd [B·H, T, T] → causal mask (-inf above the diagonal) → softmax → dropout
/// y = scores · v [B·H, T, hd] → merge heads [B, T, D] → proj → dropout
/// ```
/// ```swift
/// var g = RandomGenerator(seed: 0)
/// let attn = CausalSelfAttention(64, heads: 4, initStd: 0.02, generator: &g)
/// let y = attn(x)   // x [2, 16, 64] -> [2, 16, 64]
/// ```
public final class CausalSelfAttention: Module, Layer, @unchecked Sendable {
    /// `D → 3D`: queries, keys and values side by side in the output's last axis.
    public let qkv: Linear
    /// `D → D`: the output projection (a residual projection in a Transformer block).
    public let proj: Linear
    /// Dropout on the attention probabilities.
    public let attentionDropout: Dropout
    /// Dropout on the output, before it joins the residual stream.
    public let residualDropout: Dropout
    public let heads: Int
    public let dimension: Int

    /// - Parameters:
    ///   - initStd: normal init of `qkv` (and `proj` unless `projectionInitStd` is set), zero biases;
    ///     nil keeps PyTorch's uniform Linear init.
    public init(_ dimension: Int, heads: Int, dropout p: Double = 0, initStd: Double? = nil,
                projectionInitStd: Double? = nil, device: Device = .cpu, dtype: DType = .float32,
                generator: inout RandomGenerator) {
        guarantee(heads >= 1 && dimension % heads == 0,
                     "CausalSelfAttention: \(heads) heads do not divide the model width \(dimension)")
        self.heads = heads
        self.dimension = dimension
        qkv = Linear(dimension, 3 * dimension, initStd: initStd, device: device, dtype: dtype, generator: &generator)
        proj = Linear(dimension, dimension, initStd: projectionInitStd ?? initStd, device: device, dtype: dtype,
                      generator: &generator)
        attentionDropout = Dropout(p, generator: &generator)
        residualDropout = Dropout(p, generator: &generator)
    }

    public var headDimension: Int { dimension / heads }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        guarantee(x.rank == 3 && x.shape[2] == dimension,
                     "CausalSelfAttention(\(dimension)): input must be [B, T, \(dimension)], got \(x.shape)")
        let (b, t) = (x.shape[0], x.shape[1])
        let parts = qkv(x).split([dimension, dimension, dimension], axis: -1)
        let q = Self.splitHeads(parts[0], heads: heads)
        // The intermediate of the head split is already kᵀ [B·H, hd, T]: stop there and save a copy.
        let kT = Self.splitHeadsTransposed(parts[1], heads: heads)
        let v = Self.splitHeads(parts[2], heads: heads)
        let scores = (q * (1 / Double(headDimension).squareRoot())).matmul(kT)   // [B·H, T, T]
        let probabilities = attentionDropout(scores.causalMasked(value: -.infinity).softmax())
        let y = Self.mergeHeads(probabilities.matmul(v), batch: b, length: t, heads: heads)
        return residualDropout(proj(y))
    }

    // Only the last two axes can be swapped, so [B, T, H, hd] -> [B, H, T, hd] is composed from two
    // swaps and free reshapes: [B, T, H·hd] → [B, H·hd, T] = [B·H, hd, T] → [B·H, T, hd].

    /// `[B, T, H·hd]` → `[B·H, hd, T]`: each head's slice, transposed.
    static func splitHeadsTransposed(_ x: Tensor, heads: Int) -> Tensor {
        let (b, t, d) = (x.shape[0], x.shape[1], x.shape[2])
        return x.transposed().reshaped([b * heads, d / heads, t])
    }

    /// `[B, T, H·hd]` → `[B·H, T, hd]`: element `[b·H + h, t, e]` is `x[b, t, h·hd + e]`.
    static func splitHeads(_ x: Tensor, heads: Int) -> Tensor {
        splitHeadsTransposed(x, heads: heads).transposed()
    }

    /// The inverse of `splitHeads`: `[B·H, T, hd]` → `[B, T, H·hd]`.
    static func mergeHeads(_ y: Tensor, batch: Int, length: Int, heads: Int) -> Tensor {
        let hd = y.shape[2]
        return y.transposed().reshaped([batch, heads * hd, length]).transposed()
    }
}
