import Tensors

/// A lookup table: row `i` of `weight` `[vocabularySize, dimension]` is the vector of id `i`.
/// Ids are int32 of any shape; the output is `[ids..., dimension]`.
///
/// Default init is PyTorch's `N(0, 1)`; GPT-style models pass `initStd: 0.02`.
/// ```swift
/// var g = RandomGenerator(seed: 0)
/// let wte = Embedding(256, 64, initStd: 0.02, generator: &g)
/// let x = wte(Tensor([3, 1, 4] as [Int32], shape: [1, 3]))   // [1, 3, 64]
/// ```
public final class Embedding: Module, Layer, @unchecked Sendable {
    public let weight: Parameter
    public let vocabularySize: Int
    public let dimension: Int

    public init(_ vocabularySize: Int, _ dimension: Int, initStd: Double = 1, device: Device = .cpu,
                dtype: DType = .float32, generator: inout RandomGenerator) {
        self.vocabularySize = vocabularySize
        self.dimension = dimension
        weight = Parameter(Tensor.randomNormal([vocabularySize, dimension], std: initStd, dtype: dtype, device: device,
                                               generator: &generator))
    }

    /// Looks up `ids` (int32, any shape, values in `0..<vocabularySize`); a negative id gives a zero row.
    public func callAsFunction(_ ids: Tensor) -> Tensor {
        guarantee(ids.dtype == .int32, "Embedding(\(vocabularySize), \(dimension)): ids must be int32, got \(ids.dtype)")
        return embedding(weight.value, ids)
    }
}
