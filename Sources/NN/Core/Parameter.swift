import Tensors

/// A trainable tensor held by a module: a reference box, so optimizers, device moves and
/// checkpoint loading can replace the value in place while the module keeps its field.
///
/// ```swift
/// let w = Parameter(Tensor.randomNormal([4, 8], std: 0.02, generator: &g))
/// let y = x.matmul(w.value, transposeB: true)
/// ```
public final class Parameter: @unchecked Sendable {
    /// Which ranks hold a replica of this parameter, so that data-parallel gradient sync, global
    /// clipping and sharded checkpoints can tell parameters apart without matching names.
    /// Set where the parameter is made (`GroupedLinear` makes `.expert` ones); `ExpertList` moves the
    /// parameters of the layers it is given into `.expert`.
    public var group: ParameterGroup

    /// The current value: a leaf that requires a gradient (a value produced by a recorded op is
    /// detached, as in `init`, so gradients land in its `grad`).
    public var value: Tensor {
        didSet {
            if !value.isLeaf { value = value.detached() }
            value.requiresGrad = true
        }
    }

    public init(_ value: Tensor, group: ParameterGroup = .shared) {
        self.group = group
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

/// Where a parameter's replicas live (Megatron tags expert weights the same way, `allreduce = False`).
public enum ParameterGroup: String, Sendable, Equatable, CaseIterable {
    /// Every rank holds it: its gradient is averaged over the data-parallel group.
    case shared
    /// An expert's: held by the ranks of one expert-parallel slice; its gradient is averaged over
    /// that expert's replicas only.
    case expert
}
