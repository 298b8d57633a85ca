// The grouped linear layer of batched experts. Shapes: S rows in expert order, E experts here,
// `in`/`out` the layer's widths.

/// Grouped product over expert-contiguous rows: `x` `[S, in]`, `weight` `[E, out, in]`, `groups`
/// (`E` groups of consecutive rows, `RowGroups`) → `[S, out]` with `y_e = x_e W_eᵀ`; plus
/// `bias[E, out]` picked per row by `expertOfRow` (`[S]` int32) when given. Differentiable in `x`,
/// `weight`, `bias`. Rows past the groups are not computed (their values are unspecified).
/// ```swift
/// let h = groupedLinear(xs, weight: w1, bias: b1, groupSizes: [3, 0, 5], expertOfRow: rowsExpert)
/// ```
public func groupedLinear(_ x: Tensor, weight: Tensor, bias: Tensor? = nil, groups: RowGroups, expertOfRow: Tensor? = nil) -> Tensor {
    checkGrouped("groupedLinear", x, weight, bias, groups, expertOfRow)
    let backend = x.moeBackend("groupedLinear")
    let out = Tensor.empty([x.shape[0], weight.shape[1]], dtype: x.dtype, device: x.device)
    backend.groupedMatmul(x, weight: weight, groups: groups, transposeWeight: true, out)
    // The bias goes into the GEMM's output in place, before `out` is in the graph: one pass, no
    // gathered copy of the bias rows.
    if let bias, let expertOfRow { backend.addIndexedRows(bias, indices: expertOfRow, into: out) }
    // Backward: gx_e = gy_e W_e (grouped GEMM), gW_e = gy_eᵀ x_e (grouped weight-gradient GEMM),
    // gb_e = the column sums of gy_e (`groupedColumnSums`: one pass for every expert; a scatter-add
    // serialised on atomics, 676 ms a step for an 8-expert bf16 layer, and one column sum per
    // expert made the cost grow with E).
    return out.recording("groupedLinear", [x, weight] + (bias.map { [$0] } ?? [])) { gy in
        var gx: Tensor?
        let gw: Tensor?, gb: Tensor?
        if x.requiresGrad {
            let g = Tensor.empty(x.shape, dtype: x.dtype, device: x.device)
            backend.groupedMatmul(gy, weight: weight, groups: groups, transposeWeight: false, g)
            gx = g
        }
        (gw, gb) = groupedParameterGradients(backend, gy, x, weight, bias, groups)
        return bias == nil ? [gx, gw] : [gx, gw, gb]
    }
}

/// `activation(x_e W1_eᵀ + b1_e) W2_eᵀ + b2_e` over each expert's rows: the batched experts' MLP
/// (FastMoE's `FMoETransformerMLP` experts) as one graph node. `x` `[S, D]`, `weight1` `[E, H, D]`,
/// `bias1` `[E, H]`, `weight2` `[E, D, H]`, `bias2` `[E, D]` → `[S, D]`.
///
/// Fusion boundary, as `geluFeedForward`'s: the forward is two grouped products whose epilogues add
/// the biases and apply the activation (`GroupedEpilogue`), keeping the pre-activation `h` and
/// `a = activation(h)`. The backward from `g`: `dW2_e = g_eᵀ a_e`, `db2_e = Σ g_e`,
/// `dh = (g W2) ⊙ activation'(h)` (the activation's backward in the data-gradient product's
/// epilogue), `db1_e = Σ dh_e`, `dx = dh W1`, `dW1_e = dh_eᵀ x_e`. Without the fusion (the CPU) it
/// runs the primitives the composed layers ran, in their order, so the results are the same.
/// ```swift
/// let y = groupedFeedForward(xs, weight1: w1, bias1: b1, weight2: w2, bias2: b2, activation: .geluTanh,
///                            groups: groups.grouping, expertOfRow: groups.expertOfRow)
/// ```
public func groupedFeedForward(_ x: Tensor, weight1: Tensor, bias1: Tensor?, weight2: Tensor, bias2: Tensor?,
                               activation: UnaryOp, groups: RowGroups, expertOfRow: Tensor) -> Tensor {
    checkGrouped("groupedFeedForward (first layer)", x, weight1, bias1, groups, expertOfRow)
    let backend = x.moeBackend("groupedFeedForward")
    let rows = x.shape[0], hidden = weight1.shape[1]
    let h = Tensor.empty([rows, hidden], dtype: x.dtype, device: x.device)
    checkGrouped("groupedFeedForward (second layer)", h, weight2, bias2, groups, expertOfRow)
    let a = Tensor.empty([rows, hidden], dtype: x.dtype, device: x.device)
    backend.groupedMatmul(x, weight: weight1, groups: groups, transposeWeight: true,
                          epilogue: .activation(activation, bias: bias1, expertOfRow: expertOfRow, preactivation: h), a)
    let y = Tensor.empty([rows, weight2.shape[1]], dtype: x.dtype, device: x.device)
    if let bias2 {
        backend.groupedMatmul(a, weight: weight2, groups: groups, transposeWeight: true, epilogue: .bias(bias2, expertOfRow: expertOfRow), y)
    } else {
        backend.groupedMatmul(a, weight: weight2, groups: groups, transposeWeight: true, y)
    }
    let inputs = [x, weight1, weight2] + [bias1, bias2].compactMap { $0 }
    // `a` is let go after the second layer's weight gradient reads it, `h` after the activation's
    // backward: `dh` never shares the memory with both.
    let savedA = SavedTensor(a), savedH = SavedTensor(h)
    return y.recording("groupedFeedForward", inputs) { g in
        let (dW2, db2) = groupedParameterGradients(backend, g, savedA.take(), weight2, bias2, groups)
        var dx: Tensor?, dW1: Tensor?, db1: Tensor?
        if x.requiresGrad || weight1.requiresGrad || bias1?.requiresGrad == true {
            let h = savedH.take()
            let dh = Tensor.empty(h.shape, dtype: h.dtype, device: h.device)
            backend.groupedMatmul(g, weight: weight2, groups: groups, transposeWeight: false,
                                  epilogue: .activationBackward(activation, preactivation: h), dh)
            if x.requiresGrad {
                let out = Tensor.empty(x.shape, dtype: x.dtype, device: x.device)
                backend.groupedMatmul(dh, weight: weight1, groups: groups, transposeWeight: false, out)
                dx = out
            }
            (dW1, db1) = groupedParameterGradients(backend, dh, x, weight1, bias1, groups)
        }
        return [dx, dW1, dW2] + (bias1 == nil ? [] : [db1]) + (bias2 == nil ? [] : [db2])
    }
}

/// `groupedLinear` over groups known on the host.
public func groupedLinear(_ x: Tensor, weight: Tensor, bias: Tensor? = nil, groupSizes: [Int], expertOfRow: Tensor? = nil) -> Tensor {
    groupedLinear(x, weight: weight, bias: bias, groups: RowGroups(sizes: groupSizes), expertOfRow: expertOfRow)
}

/// `groupedFeedForward` over groups known on the host.
public func groupedFeedForward(_ x: Tensor, weight1: Tensor, bias1: Tensor?, weight2: Tensor, bias2: Tensor?,
                               activation: UnaryOp, groupSizes: [Int], expertOfRow: Tensor) -> Tensor {
    groupedFeedForward(x, weight1: weight1, bias1: bias1, weight2: weight2, bias2: bias2, activation: activation,
                       groups: RowGroups(sizes: groupSizes), expertOfRow: expertOfRow)
}

/// The shared checks of the grouped layers: `x` `[S, in]` fits `weight` `[E, out, in]`, there is a
/// group per expert (covering at most the rows, when the host knows the sizes), and a bias
/// `[E, out]` comes with the expert of each row.
private func checkGrouped(_ op: String, _ x: Tensor, _ weight: Tensor, _ bias: Tensor?, _ groups: RowGroups, _ expertOfRow: Tensor?) {
    guarantee(weight.rank == 3 && x.rank == 2 && x.lastDimension == weight.shape[2],
              "\(op): x \(x.shape) does not fit weight \(weight.shape) ([E, out, in])")
    guarantee(groups.count == weight.shape[0], "\(op): \(groups.count) groups for \(weight.shape[0]) experts")
    if let sizes = groups.knownSizes {
        guarantee(sizes.reduce(0, +) <= x.shape[0], "\(op): group sizes \(sizes) add up to more than the \(x.shape[0]) rows")
    }
    guarantee(groups.deviceCounts.map { $0.device == x.device } ?? true,
              "\(op): the group counts are on \(groups.deviceCounts!.device), the rows on \(x.device)")
    guarantee(x.dtype == weight.dtype && x.device == weight.device,
              "\(op): x is \(x.dtype) on \(x.device), weight \(weight.dtype) on \(weight.device)")
    if let bias {
        guarantee(bias.shape == [weight.shape[0], weight.shape[1]] && bias.dtype == x.dtype,
                  "\(op): bias \(bias.shape) \(bias.dtype) must be [\(weight.shape[0]), \(weight.shape[1])] \(x.dtype)")
        guard let expertOfRow else { fatalError("\(op): a bias needs expertOfRow, the expert of each row") }
        guarantee(expertOfRow.shape == [x.shape[0]] && expertOfRow.dtype == .int32,
                  "\(op): expertOfRow must be [\(x.shape[0])] int32, got \(expertOfRow.shape) \(expertOfRow.dtype)")
    }
}

/// The weight and bias gradients of a grouped product `gy`, `input` → `weight`, `bias` (nil where
/// not wanted) in one backend call, so that a backend can sum `gy`'s columns in the pass that
/// reads it for the weight gradient.
func groupedParameterGradients(_ backend: any MoEBackend, _ gy: Tensor, _ input: Tensor, _ weight: Tensor, _ bias: Tensor?,
                               _ groups: RowGroups) -> (Tensor?, Tensor?) {
    let gb = bias.flatMap { $0.requiresGrad ? Tensor.empty($0.shape, dtype: $0.dtype, device: $0.device) : nil }
    guard weight.requiresGrad else {
        if let gb { backend.groupedColumnSums(gy, groups: groups, gb) }
        return (nil, gb)
    }
    let gw = Tensor.empty(weight.shape, dtype: weight.dtype, device: weight.device)
    backend.groupedMatmulWeightGradient(gy, input, groups: groups, gw, biasGradient: gb)
    return (gw, gb)
}

extension Tensor {
    /// This tensor's backend as an `MoEBackend`, or a stop that says which backend lacks the MoE primitives.
    func moeBackend(_ op: String) -> any MoEBackend {
        guard let b = backend as? any MoEBackend else {
            fatalError("\(op): the \(device) backend does not implement MoEBackend (routingPlan, groupedMatmul, groupedMatmulWeightGradient)")
        }
        return b
    }
}
