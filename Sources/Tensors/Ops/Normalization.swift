// Softmax, log-softmax and layer norm over the last axis: x [..., C] -> [..., C].

extension Tensor {
    public func softmax() -> Tensor { softmaxOp(log: false) }
    public func logSoftmax() -> Tensor { softmaxOp(log: true) }

    private func softmaxOp(log: Bool) -> Tensor {
        let out = Tensor.empty(shape, dtype: dtype, device: device)
        backend.softmax(self, out, log: log)
        let y = out.detached()   // the saved output must not hold the graph node that holds it
        return out.recording(log ? "logSoftmax" : "softmax", [self]) { [shape, dtype, device] g in
            let gx = Tensor.empty(shape, dtype: dtype, device: device)
            gx.backend.softmaxBackward(y: y, gradOut: g, gx, log: log)
            return [gx]
        }
    }
}

/// Layer norm over the last axis with optional affine weight and bias (`[C]` each).
/// ```swift
/// let y = layerNorm(x, weight: gamma, bias: beta)
/// ```
public func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, epsilon: Float = 1e-5) -> Tensor {
    for p in [weight, bias].compactMap({ $0 }) {
        guarantee(p.shape == [x.lastDimension] && p.dtype == x.dtype && p.device == x.device,
                     "layerNorm: parameter \(p.shape) \(p.dtype) on \(p.device) does not fit input \(x.shape) \(x.dtype) on \(x.device)")
    }
    let out = Tensor.empty(x.shape, dtype: x.dtype, device: x.device)
    let mean = Tensor.empty([x.rowCount], dtype: x.dtype.statistics, device: x.device)
    let rstd = Tensor.empty([x.rowCount], dtype: x.dtype.statistics, device: x.device)
    x.backend.layerNorm(x, weight: weight, bias: bias, epsilon: epsilon, out, mean: mean, rstd: rstd)
    let inputs = [x] + [weight, bias].compactMap { $0 }
    return out.recording("layerNorm", inputs) { g in
        let gx = Tensor.empty(x.shape, dtype: x.dtype, device: x.device)
        let gw = weight.map { Tensor.empty($0.shape, dtype: $0.dtype, device: $0.device) }
        let gb = bias.map { Tensor.empty($0.shape, dtype: $0.dtype, device: $0.device) }
        x.backend.layerNormBackward(x: x, weight: weight, mean: mean, rstd: rstd, gradOut: g,
                                    gradX: gx, gradWeight: gw, gradBias: gb)
        let affine: [Tensor] = [gw, gb].compactMap { $0 }
        return [gx] + affine
    }
}
