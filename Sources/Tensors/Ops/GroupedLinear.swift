// The grouped linear layer of batched experts. Shapes: S rows in expert order, E experts here,
// `in`/`out` the layer's widths.

/// Grouped product over expert-contiguous rows: `x` `[S, in]`, `weight` `[E, out, in]`, `groupSizes`
/// (host, `E` entries summing to `S`) → `[S, out]` with `y_e = x_e W_eᵀ`; plus `bias[E, out]`
/// picked per row by `expertOfRow` (`[S]` int32) when given. Differentiable in `x`, `weight`, `bias`.
///
/// The group sizes are host integers because the GEMM problem sizes must be known on the host
/// (cuBLAS takes them as arguments); the MoE layer downloads them once per layer.
/// ```swift
/// let h = groupedLinear(xs, weight: w1, bias: b1, groupSizes: [3, 0, 5], expertOfRow: rowsExpert)
/// ```
public func groupedLinear(_ x: Tensor, weight: Tensor, bias: Tensor? = nil, groupSizes: [Int], expertOfRow: Tensor? = nil) -> Tensor {
    guarantee(weight.rank == 3 && x.rank == 2 && x.lastDimension == weight.shape[2],
                 "groupedLinear: x \(x.shape) does not fit weight \(weight.shape) ([E, out, in])")
    guarantee(groupSizes.count == weight.shape[0] && groupSizes.allSatisfy({ $0 >= 0 }) && groupSizes.reduce(0, +) == x.shape[0],
                 "groupedLinear: group sizes \(groupSizes) must be \(weight.shape[0]) non-negative counts summing to \(x.shape[0]) rows")
    guarantee(x.dtype == weight.dtype && x.device == weight.device,
                 "groupedLinear: x is \(x.dtype) on \(x.device), weight \(weight.dtype) on \(weight.device)")
    if let bias {
        guarantee(bias.shape == [weight.shape[0], weight.shape[1]] && bias.dtype == x.dtype,
                     "groupedLinear: bias \(bias.shape) \(bias.dtype) must be [\(weight.shape[0]), \(weight.shape[1])] \(x.dtype)")
        guard let expertOfRow else { fatalError("groupedLinear: a bias needs expertOfRow, the expert of each row") }
        guarantee(expertOfRow.shape == [x.shape[0]] && expertOfRow.dtype == .int32,
                     "groupedLinear: expertOfRow must be [\(x.shape[0])] int32, got \(expertOfRow.shape) \(expertOfRow.dtype)")
    }
    let backend = x.moeBackend("groupedLinear")
    let out = Tensor.empty([x.shape[0], weight.shape[1]], dtype: x.dtype, device: x.device)
    backend.groupedMatmul(x, weight: weight, groupSizes: groupSizes, transposeWeight: true, out)
    // The bias goes into the GEMM's output in place, before `out` is in the graph: one pass, no
    // gathered copy of the bias rows.
    if let bias, let expertOfRow { backend.addIndexedRows(bias, indices: expertOfRow, into: out) }
    // Backward: gx_e = gy_e W_e (grouped GEMM), gW_e = gy_eᵀ x_e (grouped weight-gradient GEMM),
    // gb_e = the column sums of gy_e (`groupedColumnSums`: one pass for every expert; a scatter-add
    // serialised on atomics, 676 ms a step for an 8-expert bf16 layer, and one column sum per
    // expert made the cost grow with E).
    return out.recording("groupedLinear", [x, weight] + (bias.map { [$0] } ?? [])) { gy in
        var gx: Tensor?, gw: Tensor?, gb: Tensor?
        if x.requiresGrad {
            let g = Tensor.empty(x.shape, dtype: x.dtype, device: x.device)
            backend.groupedMatmul(gy, weight: weight, groupSizes: groupSizes, transposeWeight: false, g)
            gx = g
        }
        if weight.requiresGrad {
            let g = Tensor.empty(weight.shape, dtype: weight.dtype, device: weight.device)
            backend.groupedMatmulWeightGradient(gy, x, groupSizes: groupSizes, g)
            gw = g
        }
        if let bias, bias.requiresGrad {
            let g = Tensor.empty(bias.shape, dtype: bias.dtype, device: bias.device)
            backend.groupedColumnSums(gy, groupSizes: groupSizes, g)
            gb = g
        }
        return bias == nil ? [gx, gw] : [gx, gw, gb]
    }
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
