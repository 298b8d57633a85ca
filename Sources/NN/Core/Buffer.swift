import Tensors

/// A module's non-trainable state tensor (PyTorch's `register_buffer`), in a box: the optimizer never
/// sees it, but checkpoints save and restore it by name, as they do parameters.
///
/// A module declares `let bias = Buffer(...)` as it declares parameters, and the module tree finds it
/// by reflection (`Module.namedBuffers()`), so a new stateful module cannot silently break exact
/// resume. The value is replaced, never mutated in place (`buffer.value = buffer.value + delta`).
/// ```swift
/// final class RunningMean: Module, Layer, @unchecked Sendable {
///     let mean = Buffer(Tensor.zeros([64]))
///     func callAsFunction(_ x: Tensor) -> Tensor { x - mean.value }
/// }
/// ```
public final class Buffer: @unchecked Sendable {
    /// The current value (never requires a gradient).
    public var value: Tensor {
        didSet { if !value.isLeaf || value.requiresGrad { value = value.detached() } }
    }

    public init(_ value: Tensor) { self.value = value.detached() }
}

extension Module {
    /// Every buffer in the tree with its dotted name (`blocks.0.mlp.gate.expertBias`), depth first in
    /// declaration order, as `namedParameters()` names parameters.
    public func namedBuffers() -> [(name: String, buffer: Buffer)] {
        namedModules().flatMap { entry -> [(name: String, buffer: Buffer)] in
            entry.module.children().compactMap { field, child -> (String, Buffer)? in
                guard case .buffer(let b) = child else { return nil }
                return (entry.name.isEmpty ? field : "\(entry.name).\(field)", b)
            }
        }
    }
}
