// The router's choice of experts and their combine weights. Shapes: logits [T, N], k choices a token.

extension Tensor {
    /// A router's choice of experts and their combine weights, as one graph node over logits
    /// `self` `[T, N]`: `expert` `[T, k]` int32, the `k` largest of the logits (`.logits`) or of
    /// `softmax(logits)` (`.probabilities`), plus `bias` `[N]` if given (it moves the choice only),
    /// in descending order, ties to the lower expert; `score` `[T, k]`, the softmax over the chosen
    /// logits. Differentiable in the logits through `score`: `dz[t, e_j] = s_j·(g_j − Σ_i s_i·g_i)`,
    /// 0 elsewhere. The same as `topK`, `gather` and `softmax` composed, in one kernel each way on
    /// CUDA instead of five forward and three backward.
    /// ```swift
    /// let (expert, score) = logits.routerTopK(2, by: .probabilities, bias: routingBias)   // [T, 2] each
    /// ```
    public func routerTopK(_ k: Int, by choice: RouterChoice, bias: Tensor? = nil) -> (expert: Tensor, score: Tensor) {
        guarantee(rank == 2 && dtype.isFloatingPoint, "routerTopK: logits must be [T, N] floats, got \(shape) \(dtype)")
        guarantee(k >= 1 && k <= lastDimension, "routerTopK(\(k)): k must be in 1...\(lastDimension)")
        guarantee(bias.map { $0.shape == [lastDimension] && $0.dtype == dtype && $0.device == device } ?? true,
                  "routerTopK: bias \(bias!.shape) \(bias!.dtype) on \(bias!.device) must be [\(lastDimension)] \(dtype) on \(device)")
        let expert = Tensor.empty([shape[0], k], dtype: .int32, device: device)
        let score = Tensor.empty([shape[0], k], dtype: dtype, device: device)
        let backend = moeBackend("routerTopK")
        backend.routerTopK(self, k: k, by: choice, bias: bias?.detached(), expert: expert, score: score)
        let saved = score.detached()
        let out = score.recording("routerTopK", [self]) { [shape, dtype, device] g in
            let gz = Tensor.empty(shape, dtype: dtype, device: device)
            backend.routerTopKBackward(score: saved, expert: expert, gradScore: g, gz)
            return [gz]
        }
        return (expert, out)
    }
}

extension Tensor {
    /// A bias-balanced router's step in place on this `[N]` float32 bias, on its device
    /// (`MoEBackend.routingBiasStep`): `b_e += rate · sign(mean − routed_e)` for the step's routed
    /// counts `routed` `[N]` int32; nothing when `skipUnlessFinite` (`[1]`, the step's squared
    /// gradient norm) is given and not finite. Not differentiable.
    public func routingBiasStep(routed: Tensor, rate: Double, skipUnlessFinite squares: Tensor?) {
        guarantee(rank == 1 && dtype == .float32 && routed.shape == shape && routed.dtype == .int32 && routed.device == device,
                  "routingBiasStep: bias \(shape) \(dtype) and counts \(routed.shape) \(routed.dtype) must be [N] float32 and [N] int32 on one device")
        moeBackend("routingBiasStep").routingBiasStep(self, routed: routed, rate: rate, skipUnlessFinite: squares)
    }
}
