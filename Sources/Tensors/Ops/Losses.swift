// Cross-entropy from logits. logits [..., C], targets int32 [...]; mean over non-ignored targets
// (NaN when every target is ignored, as in PyTorch).

/// Mean cross-entropy of `logits` against int32 class `targets`, skipping `ignoreIndex`.
/// ```swift
/// let loss = crossEntropy(logits.reshaped([-1, vocab]), targets: y.reshaped([-1]))
/// ```
public func crossEntropy(_ logits: Tensor, targets: Tensor, ignoreIndex: Int32 = -100) -> Tensor {
    guarantee(targets.dtype == .int32, "crossEntropy: targets must be int32, got \(targets.dtype)")
    guarantee(Array(logits.shape.dropLast()) == targets.shape,
                 "crossEntropy: logits \(logits.shape) need targets of shape \(Array(logits.shape.dropLast())), got \(targets.shape)")
    let rows = logits.rowCount, b = logits.backend
    let losses = Tensor.empty([rows], dtype: logits.dtype, device: logits.device)
    let valid = Tensor.empty([rows], dtype: logits.dtype, device: logits.device)
    let lse = Tensor.empty([rows], dtype: logits.dtype.statistics, device: logits.device)
    b.crossEntropy(logits, targets: targets, ignoreIndex: ignoreIndex, losses: losses, valid: valid, logsumexp: lse)
    let validCount = withoutGradient { valid.sum() }
    let loss = withoutGradient { losses.sum() / validCount }
    return loss.recording("crossEntropy", [logits]) { g in
        let gradLoss = Tensor.ones([rows], dtype: logits.dtype, device: logits.device) * (g / validCount)
        let gx = Tensor.empty(logits.shape, dtype: logits.dtype, device: logits.device)
        b.crossEntropyBackward(logits, targets: targets, ignoreIndex: ignoreIndex, logsumexp: lse, gradLoss: gradLoss, gx)
        return [gx]
    }
}
