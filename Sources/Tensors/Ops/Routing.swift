// MoE routing ops: the routing plan (which slots each expert keeps, in a stable expert order), the
// grouped linear layer of batched experts, and a differentiable scatter along the last axis (dense
// gates from top-k scores). Shapes: T tokens, k choices, N experts, S dispatched rows, E experts here.

/// The result of `routingPlan`: every tensor int32, on the routing table's device.
/// See `RoutingBackend.routingPlan` for the exact semantics of each field.
public struct RoutingPlan: @unchecked Sendable {
    /// `[T, k]`: the expert of each slot, `-1` where the slot is routed nowhere or dropped by capacity.
    public let kept: Tensor
    /// `[2, N]`: row 0 the slots routed to each expert, row 1 the slots kept (one download reads both).
    public let counts: Tensor
    /// `[T*k]`: where each kept slot sits in expert order, `-1` for slots not kept.
    public let slotPosition: Tensor
    /// `[T*k]`: the slot `b*k + j` at each expert-ordered position, `-1` past the kept ones.
    public let sortedSlot: Tensor
    /// `[T*k]`: the token of each expert-ordered position, `-1` past the kept ones (scatter indices).
    public let sortedToken: Tensor
    /// `[T*k]`: the expert of each expert-ordered position, `-1` past the kept ones.
    public let sortedExpert: Tensor
    /// The number of experts `N`.
    public let expertCount: Int

    /// `[N]`: slots routed to each expert before capacity drops (a view of `counts`).
    public var countsBeforeDrop: Tensor { counts.rows(0..<1).reshaped([expertCount]) }
    /// `[N]`: slots each expert keeps (a view of `counts`).
    public var keptCounts: Tensor { counts.rows(1..<2).reshaped([expertCount]) }
}

/// Plans the dispatch of an `[T, k]` int32 routing table over `expertCount` experts: a counting sort
/// of the slots by expert, stable in slot order, keeping at most `capacity` slots per expert in
/// `priority` order; slots whose `slotMask` is negative are routed nowhere. Not differentiable.
/// ```swift
/// let plan = routingPlan(expert, expertCount: 4, capacity: 3, priority: .choiceMajor)
/// let xs = x.indexSelect(rows: plan.sortedToken)   // rows in expert order (zero rows past the kept ones)
/// ```
public func routingPlan(_ expert: Tensor, expertCount: Int, capacity: Int? = nil,
                        priority: RoutingPriority = .tokenMajor, slotMask: Tensor? = nil) -> RoutingPlan {
    guarantee(expert.dtype == .int32 && expert.rank == 2, "routingPlan: expert must be [T, k] int32, got \(expert.shape) \(expert.dtype)")
    guarantee(expertCount >= 1, "routingPlan: expertCount \(expertCount) must be at least 1")
    guarantee(capacity.map { $0 >= 0 } ?? true, "routingPlan: capacity \(capacity!) is negative")
    if let mask = slotMask {
        guarantee(mask.shape == expert.shape && mask.dtype.isFloatingPoint && mask.device == expert.device,
                     "routingPlan: slotMask \(mask.shape) \(mask.dtype) on \(mask.device) does not fit expert \(expert.shape) on \(expert.device)")
    }
    let slots = expert.count, device = expert.device
    let plan = RoutingPlan(kept: Tensor.empty(expert.shape, dtype: .int32, device: device),
                           counts: Tensor.empty([2, expertCount], dtype: .int32, device: device),
                           slotPosition: Tensor.empty([slots], dtype: .int32, device: device),
                           sortedSlot: Tensor.empty([slots], dtype: .int32, device: device),
                           sortedToken: Tensor.empty([slots], dtype: .int32, device: device),
                           sortedExpert: Tensor.empty([slots], dtype: .int32, device: device),
                           expertCount: expertCount)
    expert.routingBackend("routingPlan").routingPlan(expert: expert, slotMask: slotMask?.detached(), expertCount: expertCount, capacity: capacity,
                               priority: priority, kept: plan.kept, counts: plan.counts, slotPosition: plan.slotPosition,
                               sortedSlot: plan.sortedSlot, sortedToken: plan.sortedToken, sortedExpert: plan.sortedExpert)
    return plan
}

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
    let out = Tensor.empty([x.shape[0], weight.shape[1]], dtype: x.dtype, device: x.device)
    x.routingBackend("groupedLinear").groupedMatmul(x, weight: weight, groupSizes: groupSizes, transposeWeight: true, out)
    let y = out.recording("groupedLinear", [x, weight]) { gy in
        var gx: Tensor?, gw: Tensor?
        if x.requiresGrad {
            let g = Tensor.empty(x.shape, dtype: x.dtype, device: x.device)
            g.routingBackend("groupedLinear").groupedMatmul(gy, weight: weight, groupSizes: groupSizes, transposeWeight: false, g)
            gx = g
        }
        if weight.requiresGrad {
            let g = Tensor.empty(weight.shape, dtype: weight.dtype, device: weight.device)
            g.routingBackend("groupedLinear").groupedMatmulWeightGradient(gy, x, groupSizes: groupSizes, g)
            gw = g
        }
        return [gx, gw]
    }
    guard let bias else { return y }
    guarantee(bias.shape == [weight.shape[0], weight.shape[1]] && bias.dtype == x.dtype,
                 "groupedLinear: bias \(bias.shape) \(bias.dtype) must be [\(weight.shape[0]), \(weight.shape[1])] \(x.dtype)")
    guard let expertOfRow else { fatalError("groupedLinear: a bias needs expertOfRow, the expert of each row") }
    guarantee(expertOfRow.shape == [x.shape[0]] && expertOfRow.dtype == .int32,
                 "groupedLinear: expertOfRow must be [\(x.shape[0])] int32, got \(expertOfRow.shape) \(expertOfRow.dtype)")
    return addGroupedBias(y, bias: bias, groupSizes: groupSizes, expertOfRow: expertOfRow)
}

/// `y[r] + bias[expertOfRow[r]]` over expert-contiguous rows. The bias gradient is a column sum over
/// each expert's block of rows, not a scatter-add: thousands of rows adding into a handful of bias
/// rows would serialise on atomics on the GPU (measured: 676 ms per step for an 8-expert bf16 layer).
func addGroupedBias(_ y: Tensor, bias: Tensor, groupSizes: [Int], expertOfRow: Tensor) -> Tensor {
    let out = withoutGradient { y + bias.indexSelect(rows: expertOfRow) }
    return out.recording("groupedBias", [y, bias]) { g in
        guard bias.requiresGrad else { return [g, nil] }
        var start = 0
        let perExpert = groupSizes.map { n -> Tensor in
            defer { start += n }
            guard n > 0 else { return Tensor.zeros([1, g.lastDimension], dtype: g.dtype, device: g.device) }
            return g.rows(start..<(start + n)).sumRows().reshaped([1, -1])
        }
        return [g, Tensor.concat(perExpert, axis: 0)]
    }
}

extension Tensor {
    /// This tensor's backend as a `RoutingBackend`, or a stop that says which backend lacks the MoE primitives.
    func routingBackend(_ op: String) -> any RoutingBackend {
        guard let b = backend as? any RoutingBackend else {
            fatalError("\(op): the \(device) backend does not implement RoutingBackend (routingPlan, groupedMatmul, groupedMatmulWeightGradient)")
        }
        return b
    }

    /// The transpose of `gather(lastAxis:)`: `[..., k]` values placed into `[..., width]` zeros at
    /// `indices` (`[..., k]` int32; `-1` places nothing; repeated indices add). Differentiable.
    /// ```swift
    /// let dense = score.scattered(lastAxis: expert, width: expertCount)   // [B, k] -> [B, N]
    /// ```
    public func scattered(lastAxis indices: Tensor, width: Int) -> Tensor {
        guarantee(indices.dtype == .int32 && indices.shape == shape,
                     "scattered: indices \(indices.shape) \(indices.dtype) must be int32 of shape \(shape)")
        let outShape = Array(shape.dropLast()) + [width]
        let out = Tensor.zeros(outShape, dtype: dtype, device: device)
        backend.scatterAddLastAxis(self, indices: indices, out)
        return out.recording("scatteredLastAxis", [self]) { g in [g.gather(lastAxis: indices)] }
    }
}
