import Tensors

/// A trainable tensor held by a module: a reference box, so optimizers, device moves and
/// checkpoint loading can replace the value in place while the module keeps its field.
///
/// ```swift
/// let w = Parameter(Tensor.randomNormal([4, 8], std: 0.02, generator: &g))
/// let y = x.matmul(w.value, transposeB: true)
/// ```
public final class Parameter: @unchecked Sendable {
    /// The current value: a leaf that requires a gradient (a value produced by a recorded op is
    /// detached, as in `init`, so gradients land in its `grad`).
    public var value: Tensor {
        didSet {
            if !value.isLeaf { value = value.detached() }
            value.requiresGrad = true
        }
    }

    public init(_ value: Tensor) {
        let leaf = value.isLeaf ? value : value.detached()
        leaf.requiresGrad = true
        self.value = leaf
    }

    public var grad: Tensor? {
        get { value.grad }
        set { value.grad = newValue }
    }

    public var shape: [Int] { value.shape }
}
