// Attention masking, dropout, dtype casts and device moves.

extension Tensor {
    /// Sets positions above the causal diagonal of the last two axes to `value` (-inf for attention).
    /// For [..., Tq, Tk] with Tk ≥ Tq, query i sees keys j ≤ i + (Tk - Tq).
    public func causalMasked(value: Double = -.infinity) -> Tensor {
        guarantee(rank >= 2, "causalMasked: needs [..., Tq, Tk], got \(shape)")
        let out = Tensor.empty(shape, dtype: dtype, device: device)
        backend.causalMask(self, value: value, out)
        return out.recording("causalMask", [self]) { g in [g.causalMasked(value: 0)] }
    }

    /// This tensor in another dtype (differentiable: the gradient is cast back).
    public func cast(to target: DType) -> Tensor {
        if target == dtype { return self }
        let out: Tensor
        if let copy = CastCopies.slot.value?.copy(of: self, to: target) {
            out = copy   // made with the others before this forward (`CastPlan`)
        } else {
            out = Tensor.empty(shape, dtype: target, device: device)
            backend.cast(self, to: out)
        }
        return out.recording("cast", [self]) { [dtype] g in [g.cast(to: dtype)] }
    }

    /// This tensor on another device (differentiable). Crossing devices goes through host memory.
    public func to(_ target: Device) -> Tensor {
        if target == device { return self }
        let out = Tensor(bytes: bytes(), shape: shape, dtype: dtype, device: target)
        return out.recording("to", [self]) { [device] g in [g.to(device)] }
    }
}

/// Inverted dropout: zeroes elements with probability `p` and scales the rest by 1/(1-p).
/// Identity when `p == 0` or `training` is false. The mask comes from `generator`, so a seeded run repeats.
public func dropout(_ x: Tensor, p: Double, training: Bool, generator: inout RandomGenerator) -> Tensor {
    guarantee(p >= 0 && p < 1, "dropout: p = \(p) must be in [0, 1)")
    guard training, p > 0 else { return x }
    let mask = Tensor.empty(x.shape, dtype: x.dtype, device: x.device)
    x.backend.random(mask, .dropoutMask(p: p), stream: generator.next())
    return x * mask
}
