// Row-wise ops on the CPU: reductions, softmax, layer norm, cross-entropy. Each forward is followed
// by its backward. Shapes: x is viewed as [R, C] with C the last axis.

extension CPUBackend {
    public func reduceLastAxis(_ op: ReduceOp, _ x: Tensor, _ out: Tensor) {
        let cols = x.lastDimension
        func run<T: CPUFloat>(_: T.Type) {
            let s = x.host(T.self), d = out.host(T.self)
            parallelFor(x.rowCount, cost: cols) { r in
                for row in r {
                    let p = s + row * cols
                    switch op {
                    case .sum:
                        // Double accumulation: the CPU result is the reference the GPU is checked against.
                        var acc = 0.0
                        for j in 0..<cols { acc += Double(p[j]) }
                        d[row] = T(acc)
                    case .max:
                        var m = -T.infinity
                        for j in 0..<cols where p[j] > m { m = p[j] }
                        d[row] = m
                    }
                }
            }
        }
        dispatchFloat(x.dtype, "reduceLastAxis") { run(Float.self) } double: { run(Double.self) }
    }

    public func sumOfSquares(_ tensors: [Tensor], _ out: Tensor) {
        // Double accumulation, tensor by tensor in order: the reference for the GPU's float32 sums.
        var acc = 0.0
        for x in tensors where x.count > 0 {
            func run<T: CPUFloat>(_: T.Type) {
                let p = x.host(T.self)
                for i in 0..<x.count { acc += Double(p[i]) * Double(p[i]) }
            }
            dispatchFloat(x.dtype, "sumOfSquares") { run(Float.self) } double: { run(Double.self) }
        }
        dispatchFloat(out.dtype, "sumOfSquares") { out.host(Float.self)[0] = Float(acc) } double: { out.host(Double.self)[0] = acc }
    }

    public func sumRows(_ x: Tensor, _ out: Tensor) {
        let cols = x.lastDimension, rows = x.rowCount
        func run<T: CPUFloat>(_: T.Type) {
            let s = x.host(T.self), d = out.host(T.self)
            parallelFor(cols, cost: rows) { r in
                for j in r {
                    var acc = 0.0
                    for i in 0..<rows { acc += Double(s[i * cols + j]) }
                    d[j] = T(acc)
                }
            }
        }
        dispatchFloat(x.dtype, "sumRows") { run(Float.self) } double: { run(Double.self) }
    }

    // MARK: Softmax — y = exp(x - logsumexp(x)); log form y = x - logsumexp(x)

    public func softmax(_ x: Tensor, _ out: Tensor, log: Bool) {
        let cols = x.lastDimension
        func run<T: CPUFloat>(_: T.Type) {
            let s = x.host(T.self), d = out.host(T.self)
            parallelFor(x.rowCount, cost: cols * 4) { r in
                for row in r {
                    let p = s + row * cols, q = d + row * cols
                    var m = -T.infinity
                    for j in 0..<cols where p[j] > m { m = p[j] }
                    var sum: T = 0
                    for j in 0..<cols { sum += T.exp(p[j] - m) }
                    if log {
                        let lse = m + T.log(sum)
                        for j in 0..<cols { q[j] = p[j] - lse }
                    } else {
                        let inv = 1 / sum
                        for j in 0..<cols { q[j] = T.exp(p[j] - m) * inv }
                    }
                }
            }
        }
        dispatchFloat(x.dtype, "softmax") { run(Float.self) } double: { run(Double.self) }
    }

    /// softmax: gx = y * (g - <g, y>); log-softmax: gx = g - exp(y) * Σg.
    public func softmaxBackward(y: Tensor, gradOut: Tensor, _ out: Tensor, log: Bool) {
        let cols = y.lastDimension
        func run<T: CPUFloat>(_: T.Type) {
            let yp = y.host(T.self), gp = gradOut.host(T.self), d = out.host(T.self)
            parallelFor(y.rowCount, cost: cols * 3) { r in
                for row in r {
                    let o = row * cols
                    var dot: T = 0
                    if log {
                        for j in 0..<cols { dot += gp[o + j] }
                        for j in 0..<cols { d[o + j] = gp[o + j] - T.exp(yp[o + j]) * dot }
                    } else {
                        for j in 0..<cols { dot += gp[o + j] * yp[o + j] }
                        for j in 0..<cols { d[o + j] = yp[o + j] * (gp[o + j] - dot) }
                    }
                }
            }
        }
        dispatchFloat(y.dtype, "softmaxBackward") { run(Float.self) } double: { run(Double.self) }
    }

    // MARK: Layer norm — y = (x - mean) * rstd * w + b, rstd = 1/sqrt(var + eps) (biased variance)

    public func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, epsilon: Float, _ out: Tensor, mean: Tensor, rstd: Tensor) {
        let cols = x.lastDimension
        func run<T: CPUFloat>(_: T.Type) {
            let s = x.host(T.self), d = out.host(T.self)
            let w = weight?.host(T.self), b = bias?.host(T.self)
            let mp = mean.host(T.self), rp = rstd.host(T.self)
            parallelFor(x.rowCount, cost: cols * 4) { r in
                for row in r {
                    let o = row * cols
                    var sum = 0.0, sq = 0.0
                    for j in 0..<cols { sum += Double(s[o + j]) }
                    let mu = sum / Double(cols)
                    for j in 0..<cols { let c = Double(s[o + j]) - mu; sq += c * c }
                    let rs = 1 / (sq / Double(cols) + Double(epsilon)).squareRoot()
                    mp[row] = T(mu)
                    rp[row] = T(rs)
                    for j in 0..<cols {
                        var v = T((Double(s[o + j]) - mu) * rs)
                        if let w { v *= w[j] }
                        if let b { v += b[j] }
                        d[o + j] = v
                    }
                }
            }
        }
        guarantee(mean.dtype == x.dtype.statistics && rstd.dtype == x.dtype.statistics, "layerNorm: mean/rstd must be \(x.dtype.statistics)")
        dispatchFloat(x.dtype, "layerNorm") { run(Float.self) } double: { run(Double.self) }
    }

    public func layerNormBackward(x: Tensor, weight: Tensor?, mean: Tensor, rstd: Tensor, gradOut: Tensor,
                                  gradX: Tensor, gradWeight: Tensor?, gradBias: Tensor?) {
        let cols = x.lastDimension, rows = x.rowCount
        func run<T: CPUFloat>(_: T.Type) {
            let s = x.host(T.self), g = gradOut.host(T.self), dx = gradX.host(T.self)
            let w = weight?.host(T.self)
            let mp = mean.host(T.self), rp = rstd.host(T.self)
            parallelFor(rows, cost: cols * 6) { r in
                for row in r {
                    let o = row * cols, mu = Double(mp[row]), rs = Double(rp[row])
                    var meanD = 0.0, meanDX = 0.0
                    for j in 0..<cols {
                        let xhat = (Double(s[o + j]) - mu) * rs
                        let dxhat = Double(g[o + j]) * (w.map { Double($0[j]) } ?? 1)
                        meanD += dxhat
                        meanDX += dxhat * xhat
                    }
                    meanD /= Double(cols)
                    meanDX /= Double(cols)
                    for j in 0..<cols {
                        let xhat = (Double(s[o + j]) - mu) * rs
                        let dxhat = Double(g[o + j]) * (w.map { Double($0[j]) } ?? 1)
                        dx[o + j] = T(rs * (dxhat - meanD - xhat * meanDX))
                    }
                }
            }
            let gw = gradWeight?.host(T.self), gb = gradBias?.host(T.self)
            guard gw != nil || gb != nil else { return }
            parallelFor(cols, cost: rows * 2) { r in
                for j in r {
                    var aw = 0.0, ab = 0.0
                    for row in 0..<rows {
                        let gv = Double(g[row * cols + j])
                        aw += gv * (Double(s[row * cols + j]) - Double(mp[row])) * Double(rp[row])
                        ab += gv
                    }
                    gw?[j] = T(aw)
                    gb?[j] = T(ab)
                }
            }
        }
        dispatchFloat(x.dtype, "layerNormBackward") { run(Float.self) } double: { run(Double.self) }
    }

    // MARK: Cross-entropy — loss[r] = logsumexp(x[r]) - x[r, t[r]]

    public func crossEntropy(_ logits: Tensor, targets: Tensor, ignoreIndex: Int32, losses: Tensor, valid: Tensor, logsumexp: Tensor) {
        let cols = logits.lastDimension
        func run<T: CPUFloat>(_: T.Type) {
            let s = logits.host(T.self), t = targets.host(Int32.self)
            let l = losses.host(T.self), v = valid.host(T.self), lse = logsumexp.host(T.self)
            parallelFor(logits.rowCount, cost: cols * 4) { r in
                for row in r {
                    let p = s + row * cols
                    var m = -T.infinity
                    for j in 0..<cols where p[j] > m { m = p[j] }
                    var sum: T = 0
                    for j in 0..<cols { sum += T.exp(p[j] - m) }
                    let z = m + T.log(sum)
                    lse[row] = z
                    let target = t[row]
                    if target == ignoreIndex {
                        l[row] = 0
                        v[row] = 0
                    } else {
                        v[row] = 1
                        guarantee(target >= 0 && Int(target) < cols, "crossEntropy: target \(target) outside [0, \(cols))")
                        l[row] = z - p[Int(target)]
                    }
                }
            }
        }
        dispatchFloat(logits.dtype, "crossEntropy") { run(Float.self) } double: { run(Double.self) }
    }

    public func crossEntropyBackward(_ logits: Tensor, targets: Tensor, ignoreIndex: Int32, logsumexp: Tensor, gradLoss: Tensor, _ out: Tensor) {
        let cols = logits.lastDimension
        func run<T: CPUFloat>(_: T.Type) {
            let s = logits.host(T.self), t = targets.host(Int32.self), lse = logsumexp.host(T.self)
            let g = gradLoss.host(T.self), d = out.host(T.self)
            parallelFor(logits.rowCount, cost: cols * 3) { r in
                for row in r {
                    let o = row * cols, target = t[row]
                    if target == ignoreIndex {
                        for j in 0..<cols { d[o + j] = 0 }
                        continue
                    }
                    let z = lse[row], gr = g[row]
                    for j in 0..<cols { d[o + j] = gr * T.exp(s[o + j] - z) }
                    d[o + Int(target)] -= gr
                }
            }
        }
        dispatchFloat(logits.dtype, "crossEntropyBackward") { run(Float.self) } double: { run(Double.self) }
    }
}
