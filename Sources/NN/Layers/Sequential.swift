import Tensors

/// Layers applied one after another; their parameters are named `layers.<index>.<name>`.
/// ```swift
/// var g = RandomGenerator(seed: 0)
/// let net = Sequential([Linear(4, 8, generator: &g), Activation(.relu), Linear(8, 2, generator: &g)])
/// let y = net(x)   // x [N, 4] -> [N, 2]
/// ```
public final class Sequential: Module, Layer, @unchecked Sendable {
    public let layers: [any Layer]

    public init(_ layers: [any Layer]) { self.layers = layers }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        layers.reduce(x) { y, layer in layer(y) }
    }
}
