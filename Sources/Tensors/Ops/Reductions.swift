// Sums, means and maxima. Shapes: x [..., C]; "all" gives a scalar [], "last axis" gives [...].

extension Tensor {
    /// Sum of every element, as a scalar tensor of shape [].
    public func sum() -> Tensor {
        let flat = reshaped([1, count])
        let out = Tensor.empty([1], dtype: dtype, device: device)
        backend.reduceLastAxis(.sum, flat, out)
        return out.reshaped([]).recording("sum", [self]) { [shape, dtype, device] g in
            [Tensor.ones(shape, dtype: dtype, device: device) * g]
        }
    }

    /// Mean of every element, as a scalar tensor.
    public func mean() -> Tensor { sum() * (1 / Double(Swift.max(count, 1))) }

    /// Sum over the last axis: [..., C] -> [...].
    public func sum(lastAxis: Void) -> Tensor {
        let out = Tensor.empty(Array(shape.dropLast()), dtype: dtype, device: device)
        backend.reduceLastAxis(.sum, self, out)
        return out.recording("sumLastAxis", [self]) { [shape, dtype, device] g in
            [Tensor.ones(shape, dtype: dtype, device: device) * g]
        }
    }

    /// Reductions over an axis; only the last axis (-1 or rank-1) is supported.
    public func sum(axis: Int) -> Tensor {
        guarantee(axis == -1 || axis == rank - 1, "sum(axis: \(axis)) on \(shape): only the last axis is supported")
        return sum(lastAxis: ())
    }

    public func mean(axis: Int) -> Tensor { sum(axis: axis) * (1 / Double(Swift.max(lastDimension, 1))) }

    /// Maximum over the last axis: [..., C] -> [...]; the gradient flows to the first maximal element.
    public func max(axis: Int) -> Tensor {
        guarantee(axis == -1 || axis == rank - 1, "max(axis: \(axis)) on \(shape): only the last axis is supported")
        return topK(1).values.reshaped(Array(shape.dropLast()))
    }

    /// `log Σ_j e^{x[..., j]}` over the last axis: `[..., C] -> [...]`, without overflow.
    ///
    /// The row maximum `m` is subtracted before `exp` and added back, `m + log Σ e^{x − m}`; the result
    /// does not depend on `m`, so `m` is a constant to autograd. The gradient is `g · softmax(x)`.
    /// A row whose maximum is ±∞ gives NaN.
    /// ```swift
    /// let zLoss = logits.logSumExp(axis: -1).squared().mean()   // ST-MoE's router z-loss
    /// ```
    public func logSumExp(axis: Int = -1) -> Tensor {
        guarantee(axis == -1 || axis == rank - 1, "logSumExp(axis: \(axis)) on \(shape): only the last axis is supported")
        guarantee(rank >= 1, "logSumExp: needs at least one dimension, got a scalar")
        // Per-row values as [..., 1] columns: a bare [R] would broadcast as a row over an [R, R] input.
        let column = Array(shape.dropLast()) + [1]
        let value = withoutGradient { () -> Tensor in
            let m = Tensor.empty(column, dtype: dtype, device: device)
            backend.reduceLastAxis(.max, self, m)
            return ((self - m).exp().sum(lastAxis: ()).reshaped(column).log() + m).reshaped(Array(shape.dropLast()))
        }
        return value.recording("logSumExp", [self]) { [self] g in [softmax() * g.reshaped(column)] }
    }

    /// [R, C] -> [C]: the sum of all rows (e.g. a bias gradient).
    public func sumRows() -> Tensor {
        let out = Tensor.empty([lastDimension], dtype: dtype, device: device)
        backend.sumRows(self, out)
        return out.recording("sumRows", [self]) { [shape, dtype, device] g in
            [Tensor.ones(shape, dtype: dtype, device: device) * g]
        }
    }
}

/// `Σ x²` over every element of `tensors` (float tensors on one device), as a `[1]` tensor in
/// float32 (float64 when every tensor is float64); not recorded. The squared norm of a model's
/// gradients in a few launches per dtype (`Backend.sumOfSquares`), not several per tensor.
/// ```swift
/// let norm = sumOfSquares(model.parameters().compactMap(\.grad)).item().squareRoot()
/// ```
public func sumOfSquares(_ tensors: [Tensor]) -> Tensor {
    let groups = groupedByDType(tensors, "sumOfSquares")
    guard let first = groups.first?.first else {
        return Tensor.zeros([1], dtype: tensors.first?.dtype == .float64 ? .float64 : .float32, device: tensors.first?.device ?? .cpu)
    }
    let accumulation: DType = groups.count == 1 && first.dtype == .float64 ? .float64 : .float32
    var total: Tensor?
    for group in groups {
        let out = Tensor.empty([1], dtype: group[0].dtype == .float64 ? .float64 : .float32, device: first.device)
        first.backend.sumOfSquares(group, out)
        let part = out.cast(to: accumulation)
        total = withoutGradient { total.map { $0 + part } ?? part }
    }
    return total!
}

/// Multiplies every element of every tensor by `factor`, in place (float tensors on one device;
/// not recorded, so only for tensors outside the graph, such as gradients). One launch per dtype.
public func scaleInPlace(_ tensors: [Tensor], by factor: Double) {
    for group in groupedByDType(tensors, "scaleInPlace") { group[0].backend.scaleInPlace(group, by: factor) }
}

/// The tensors with elements, grouped by dtype in the order the dtypes first appear (one backend
/// call each); stops unless they are float tensors on one device.
private func groupedByDType(_ tensors: [Tensor], _ op: String) -> [[Tensor]] {
    let present = tensors.filter { $0.count > 0 }
    guard let first = present.first else { return [] }
    guarantee(present.allSatisfy { $0.device == first.device && $0.dtype.isFloatingPoint },
              "\(op): every tensor must be a float tensor on \(first.device)")
    var groups: [[Tensor]] = []
    for t in present {
        if let i = groups.firstIndex(where: { $0[0].dtype == t.dtype }) { groups[i].append(t) } else { groups.append([t]) }
    }
    return groups
}
