#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The CPU runs epilogues unfused: that form is the reference the fused GPU path is checked against.
extension CPUBackend: EpilogueBackend {
    public func matmul(_ a: Tensor, _ b: Tensor, _ out: Tensor, transposeA: Bool, transposeB: Bool, epilogue: MatmulEpilogue) {
        unfusedMatmul(a, b, out, transposeA: transposeA, transposeB: transposeB, epilogue: epilogue)
    }
}

extension CPUBackend {
    /// a `[B?, M, K]` (or `[B?, K, M]` transposed), b `[B?, K, N]` or shared 2-D, out `[B?, M, N]`.
    public func matmul(_ a: Tensor, _ b: Tensor, _ out: Tensor, transposeA: Bool, transposeB: Bool, alpha: Float, beta: Float) {
        let m = out.shape[out.rank - 2], n = out.shape[out.rank - 1]
        let k = transposeA ? a.shape[a.rank - 2] : a.shape[a.rank - 1]
        let batch = out.count / max(m * n, 1)
        let lda = transposeA ? m : k, ldb = transposeB ? k : n
        let strideB = b.rank == 2 ? 0 : k * n
        switch a.dtype {
        case .float32:
            CPUGEMM.gemmBatched(transA: transposeA, transB: transposeB, m: m, n: n, k: k, alpha: alpha,
                                a: a.host(Float.self), lda: lda, strideA: m * k, b: b.host(Float.self), ldb: ldb, strideB: strideB,
                                beta: beta, c: out.host(Float.self), ldc: n, strideC: m * n, batch: batch)
        case .float64:
            CPUGEMM.gemmBatched(transA: transposeA, transB: transposeB, m: m, n: n, k: k, alpha: Double(alpha),
                                a: a.host(Double.self), lda: lda, strideA: m * k, b: b.host(Double.self), ldb: ldb, strideB: strideB,
                                beta: Double(beta), c: out.host(Double.self), ldc: n, strideC: m * n, batch: batch)
        default:
            fatalError("matmul: \(a.dtype) compute runs on CUDA; cast to float32 on the CPU")
        }
    }

    /// AdamW as PyTorch computes it: p -= lr·wd·p; m, v moments; p -= lr/(1-β1^t) · m / (√v/√(1-β2^t) + ε),
    /// one tensor after the other. With `scheduled`, the schedule and the clipping are read from its
    /// tensors, and nothing changes when the squared gradient norm is not finite.
    public func adamW(_ tensors: [AdamWTensors], _ s: AdamWStep, scheduled: ScheduledStep?) {
        var values: [Double]?
        var scale: Double?
        if let scheduled {
            guard let factor = ScheduledStep.clipFactor(norm: scheduled.gradientSquares.doubles()[0].squareRoot(), maxNorm: scheduled.maxNorm)
            else { return }
            values = scheduled.schedule.doubles()
            scale = factor == 1 ? nil : factor
        }
        for t in tensors {
            func run<T: CPUFloat>(_: T.Type) {
                let lr: T, stepSize: T, c2: T
                if let values {
                    (lr, stepSize, c2) = (T(values[0]), T(values[1]), T(values[2]))
                } else {
                    lr = T(s.learningRate)
                    stepSize = lr / (1 - T(pow(Double(s.beta1), Double(s.step))))
                    c2 = T((1 - pow(Double(s.beta2), Double(s.step))).squareRoot())
                }
                adamWUpdate(T.self, t, s, learningRate: lr, stepSize: stepSize, c2: c2, scale: scale.map { T($0) })
            }
            dispatchFloat(t.parameter.dtype, "adamW") { run(Float.self) } double: { run(Double.self) }
        }
    }

    /// AdamW as PyTorch computes it, the gradient first multiplied by `scale` when given.
    private func adamWUpdate<T: CPUFloat>(_: T.Type, _ t: AdamWTensors, _ s: AdamWStep, learningRate lr: T, stepSize: T, c2: T, scale: T?) {
        let p = t.parameter.host(T.self), g = t.gradient.host(T.self), mp = t.m.host(T.self), vp = t.v.host(T.self)
        let b1 = T(s.beta1), b2 = T(s.beta2), eps = T(s.epsilon)
        let decay = 1 - lr * T(t.weightDecay)
        parallelFor(t.parameter.count, cost: 8) { r in
            for i in r {
                let gi = scale.map { g[i] * $0 } ?? g[i]
                mp[i] = b1 * mp[i] + (1 - b1) * gi
                vp[i] = b2 * vp[i] + (1 - b2) * gi * gi
                p[i] = p[i] * decay - stepSize * mp[i] / (vp[i].squareRoot() / c2 + eps)
            }
        }
    }
}
