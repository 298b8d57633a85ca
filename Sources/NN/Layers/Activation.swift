import Tensors

/// An elementwise activation function as a layer (no parameters).
/// ```swift
/// let act = Activation(.gelu(approximate: true))
/// let y = act(x)
/// ```
public final class Activation: Module, Layer, @unchecked Sendable {
    /// The function applied.
    public enum Kind: Sendable, Equatable {
        /// GELU: `approximate` picks GPT-2's tanh form, otherwise the exact `x·Φ(x)` with erf.
        case gelu(approximate: Bool)
        /// `x · sigmoid(x)`.
        case silu
        /// `max(x, 0)`.
        case relu
    }

    public let kind: Kind

    public init(_ kind: Kind) { self.kind = kind }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        switch kind {
        case .gelu(let approximate): x.gelu(approximate: approximate)
        case .silu: x.silu()
        case .relu: x.relu()
        }
    }
}
