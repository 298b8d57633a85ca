import Tensors

/// Attaches a scalar training loss to an activation (Megatron's `MoEAuxLossAutoScaler`): the result
/// is `output` unchanged, and its backward also sends gradient 1 into `loss`. A layer can thus add
/// its balance loss to the objective without changing its signature (`Tensor → Tensor`) or keeping
/// state for the trainer: `loss.backward()` on the task loss reaches the gate through the graph.
/// ```swift
/// let y = attachAuxiliaryLoss(balance * 0.01, to: moeOutput)
/// ```
public func attachAuxiliaryLoss(_ loss: Tensor, to output: Tensor) -> Tensor {
    guarantee(loss.count == 1, "attachAuxiliaryLoss: the loss must be a scalar, got \(loss.shape)")
    // A fresh node over the same storage: the op is an identity, nothing is copied.
    let alias = Tensor(storage: output.storage, shape: output.shape, dtype: output.dtype, byteOffset: output.byteOffset)
    return alias.recording("auxiliaryLoss", [output, loss]) { g in
        [g, Tensor.ones(loss.shape, dtype: loss.dtype, device: loss.device)]
    }
}
