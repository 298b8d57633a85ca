// Linear layers with the bias and GELU in the matrix product's epilogue (cuBLASLt on CUDA, the
// unfused primitives on the CPU). Shapes: x [..., in] taken as R rows, weight [out, in] (PyTorch's
// layout), bias [out]; for the feed-forward x [..., D], weight1 [H, D], weight2 [D, H].

/// The activation `linear` applies after its bias.
public enum LinearActivation: Sendable, Equatable {
    case none
    /// GELU, tanh approximation: `x.gelu(approximate: true)`.
    case geluTanh
}

/// `activation(x · weightᵀ + bias)` as one graph node.
///
/// Fusion boundary: the forward is one GEMM whose epilogue adds the bias (and applies GELU, keeping
/// the pre-activation `h`). The backward gets `g`, the gradient of the output: `dh = g ⊙ gelu'(h)`
/// is an elementwise primitive (no GEMM of this node produces `g`; ``geluFeedForward(_:weight1:bias1:weight2:bias2:)``
/// spans two layers to fuse it), then `dx = dh · W`, and `dW = dhᵀ · x` whose epilogue also writes
/// the bias gradient `Σ_rows dh`. Without bias and activation it is `x.matmul(weight, transposeB: true)`.
/// ```swift
/// let y = linear(x, weight: w, bias: b, activation: .geluTanh)   // x [T, in], w [out, in] -> [T, out]
/// ```
public func linear(_ x: Tensor, weight: Tensor, bias: Tensor? = nil, activation: LinearActivation = .none) -> Tensor {
    checkLinear("linear", x, weight, bias)
    guard bias != nil || activation != .none else { return x.matmul(weight, transposeB: true) }
    let rows = x.reshaped([-1, x.lastDimension])
    let preactivation = activation == .geluTanh
        ? Tensor.empty([rows.shape[0], weight.shape[0]], dtype: x.dtype, device: x.device) : nil
    let y = epilogueMatmul(rows, weight, transposeB: true,
                           preactivation.map { .gelu(bias: bias, preactivation: $0) } ?? .bias(bias!))
    let inputs = [rows, weight] + (bias.map { [$0] } ?? [])
    let out = y.recording("linear", inputs) { g in
        let dh = preactivation.map { h in
            let dh = Tensor.empty(g.shape, dtype: g.dtype, device: g.device)
            g.backend.unaryBackward(.geluTanh, x: h, gradOut: g, dh)
            return dh
        } ?? g
        let d = linearGradients(dh, x: rows, weight: weight, bias: bias)
        return [d.x, d.weight] + (bias == nil ? [] : [d.bias])
    }
    return out.reshaped(Array(x.shape.dropLast()) + [weight.shape[0]])
}

/// `gelu(x · weight1ᵀ + bias1) · weight2ᵀ + bias2` (GELU the tanh form): GPT-2's MLP as one graph node.
///
/// Fusion boundary: one node spans both layers, so that GELU's backward rides on the GEMM that
/// produces its input gradient. Forward: `h = x·W1ᵀ + b1` and `a = gelu(h)` from one GEMM (epilogue
/// GELU_AUX_BIAS keeps `h`), `y = a·W2ᵀ + b2` from one (BIAS). Backward from `g`: `dW2 = gᵀ·a` with
/// `db2 = Σ_rows g` (BGRADB), `dh = (g·W2) ⊙ gelu'(h)` with `db1 = Σ_rows dh` (the epilogue
/// `geluBackward`: on CUDA a plain GEMM, then the GELU backward in place and a column sum, faster
/// than cuBLASLt's DGELU_BGRAD), `dx = dh·W1`, `dW1 = dhᵀ·x`. It keeps `x`, `h` and `a` for the
/// backward; the layers composed also kept the two products before their biases.
/// ```swift
/// let y = geluFeedForward(x, weight1: w1, bias1: b1, weight2: w2, bias2: b2)   // x [T, D] -> [T, D]
/// ```
public func geluFeedForward(_ x: Tensor, weight1: Tensor, bias1: Tensor?, weight2: Tensor, bias2: Tensor?) -> Tensor {
    checkLinear("geluFeedForward (first layer)", x, weight1, bias1)
    let rows = x.reshaped([-1, x.lastDimension])
    let h = Tensor.empty([rows.shape[0], weight1.shape[0]], dtype: x.dtype, device: x.device)
    checkLinear("geluFeedForward (second layer)", h, weight2, bias2)
    let a = epilogueMatmul(rows, weight1, transposeB: true, .gelu(bias: bias1, preactivation: h))
    let y = epilogueMatmul(a, weight2, transposeB: true, bias2.map { .bias($0) })
    let inputs = [rows, weight1, weight2] + [bias1, bias2].compactMap { $0 }
    // `a` is let go after its weight gradient reads it, `h` after GELU's backward.
    let savedA = SavedTensor(a), savedH = SavedTensor(h)
    let out = y.recording("geluFeedForward", inputs) { g in
        // `a` needs no gradient of its own: the second layer's input gradient is `dh`, computed here.
        let second = linearGradients(g, x: savedA.take(), weight: weight2, bias: bias2)
        var first: (x: Tensor?, weight: Tensor?, bias: Tensor?) = (nil, nil, nil)
        if rows.requiresGrad || weight1.requiresGrad || bias1?.requiresGrad == true {
            let db1 = bias1?.requiresGrad == true ? Tensor.empty([weight1.shape[0]], dtype: g.dtype, device: g.device) : nil
            let dh = epilogueMatmul(g, weight2, .geluBackward(preactivation: savedH.take(), biasGradient: db1))
            first = linearGradients(dh, x: rows, weight: weight1, bias: bias1, biasGradient: db1)
        }
        return [first.x, first.weight, second.weight] + (bias1 == nil ? [] : [first.bias]) + (bias2 == nil ? [] : [second.bias])
    }
    return out.reshaped(Array(x.shape.dropLast()) + [weight2.shape[0]])
}

/// Gradients of `y = x·Wᵀ + b` from `dy` (`[R, out]`): `dx = dy·W` when `x` needs it, `dW = dyᵀ·x`
/// whose epilogue writes the bias gradient `Σ_rows dy` too, unless the GEMM that produced `dy`
/// already did (`biasGradient`). A bias whose weight needs no gradient gets a plain column sum.
private func linearGradients(_ dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor?, biasGradient: Tensor? = nil)
    -> (x: Tensor?, weight: Tensor?, bias: Tensor?) {
    let dx = x.requiresGrad ? dy.matmul(weight) : nil
    guard bias?.requiresGrad == true, biasGradient == nil else {
        return (dx, weight.requiresGrad ? dy.matmul(x, transposeA: true) : nil, bias == nil ? nil : biasGradient)
    }
    guard weight.requiresGrad else { return (dx, nil, dy.sumRows()) }
    let db = Tensor.empty([weight.shape[0]], dtype: dy.dtype, device: dy.device)
    return (dx, epilogueMatmul(dy, x, transposeA: true, .biasGradientOfA(db)), db)
}

/// `op(a) · op(b)` for 2-D `a`, `b` with `epilogue` (nil: a plain product), not recorded: the ops
/// above record one node for the whole layer. A backend without `EpilogueBackend` runs it unfused.
private func epilogueMatmul(_ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false,
                            _ epilogue: MatmulEpilogue?) -> Tensor {
    let out = Tensor.empty([transposeA ? a.shape[1] : a.shape[0], transposeB ? b.shape[0] : b.shape[1]], dtype: a.dtype, device: a.device)
    let backend = a.backend
    if let epilogue, let fused = backend as? any EpilogueBackend {
        fused.matmul(a, b, out, transposeA: transposeA, transposeB: transposeB, epilogue: epilogue)
    } else if let epilogue {
        backend.unfusedMatmul(a, b, out, transposeA: transposeA, transposeB: transposeB, epilogue: epilogue)
    } else {
        backend.matmul(a, b, out, transposeA: transposeA, transposeB: transposeB, alpha: 1, beta: 0)
    }
    return out
}

private func checkLinear(_ op: String, _ x: Tensor, _ weight: Tensor, _ bias: Tensor?) {
    guarantee(weight.rank == 2 && x.rank >= 1 && x.lastDimension == weight.shape[1],
              "\(op): x \(x.shape) does not fit weight \(weight.shape) ([out, in])")
    guarantee(x.dtype == weight.dtype && x.device == weight.device,
              "\(op): x is \(x.dtype) on \(x.device), weight \(weight.dtype) on \(weight.device)")
    if let bias {
        guarantee(bias.shape == [weight.shape[0]] && bias.dtype == x.dtype && bias.device == x.device,
                  "\(op): bias \(bias.shape) \(bias.dtype) on \(bias.device) must be [\(weight.shape[0])] \(x.dtype) on \(x.device)")
    }
}
