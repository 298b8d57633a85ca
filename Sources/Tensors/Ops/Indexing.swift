// Row gathers and scatters (embedding, index-select, index-add) and top-k. Indices are int32;
// a negative index means "no row" (a zero row when gathering, skipped when scattering).

extension Tensor {
    /// Rows of `self` ([V, D...]) picked by `indices` (any shape): out [indices..., D...].
    public func indexSelect(rows indices: Tensor) -> Tensor {
        guarantee(indices.dtype == .int32, "indexSelect: indices must be int32, got \(indices.dtype)")
        guarantee(indices.device == device, "indexSelect: indices on \(indices.device), table on \(device)")
        guarantee(rank >= 1, "indexSelect: table must have at least one dimension")
        let rowShape = Array(shape.dropFirst())
        // Explicit widths, not -1: no indices (an expert-parallel rank that receives no rows) is a
        // [0, width] gather, whose -1 could not be inferred.
        let width = rowShape.reduce(1, *)
        let out = Tensor.empty(indices.shape + rowShape, dtype: dtype, device: device)
        let table = reshaped([shape[0], width])
        backend.gatherRows(table, indices: indices, out.reshaped([indices.count, width]))
        return out.recording("indexSelect", [self]) { [shape, dtype, device] g in
            let gt = Tensor.zeros(shape, dtype: dtype, device: device)
            gt.backend.scatterAddRows(g.reshaped([indices.count, width]), indices: indices, gt.reshaped([shape[0], width]))
            return [gt]
        }
    }

    /// `self` with `source` rows added at `indices`: out[indices[i]] += source[i] (a new tensor).
    public func indexAdd(rows indices: Tensor, _ source: Tensor) -> Tensor {
        guarantee(indices.dtype == .int32 && indices.rank == 1, "indexAdd: indices must be 1-D int32, got \(indices.shape) \(indices.dtype)")
        guarantee(source.shape == [indices.count] + shape.dropFirst() && source.dtype == dtype,
                     "indexAdd: source \(source.shape) \(source.dtype) does not fit \(indices.count) rows of \(shape) \(dtype)")
        let out = contiguousCopy().detached()
        backend.scatterAddRows(source.reshaped([indices.count, -1]), indices: indices, out.reshaped([shape[0], -1]))
        return out.recording("indexAdd", [self, source]) { g in
            [g, g.indexSelect(rows: indices)]
        }
    }

    /// The `k` largest values of the last axis, largest first (ties: lower index first), and their int32 indices.
    public func topK(_ k: Int) -> (values: Tensor, indices: Tensor) {
        guarantee(k >= 1 && k <= lastDimension, "topK(\(k)): k must be in 1...\(lastDimension) for shape \(shape)")
        let outShape = Array(shape.dropLast()) + [k]
        let values = Tensor.empty(outShape, dtype: dtype, device: device)
        let indices = Tensor.empty(outShape, dtype: .int32, device: device)
        backend.topK(self, k: k, values: values, indices: indices)
        values.recording("topK", [self]) { [shape, dtype, device] g in
            let gx = Tensor.zeros(shape, dtype: dtype, device: device)
            gx.backend.scatterAddLastAxis(g, indices: indices, gx)
            return [gx]
        }
        return (values, indices)
    }

    /// `out[..., j] = self[..., indices[..., j]]` along the last axis (index -1 gives 0).
    public func gather(lastAxis indices: Tensor) -> Tensor {
        guarantee(indices.dtype == .int32 && Array(indices.shape.dropLast()) == Array(shape.dropLast()),
                     "gather: indices \(indices.shape) \(indices.dtype) do not fit \(shape)")
        let out = Tensor.empty(indices.shape, dtype: dtype, device: device)
        backend.gatherLastAxis(self, indices: indices, out)
        return out.recording("gather", [self]) { [shape, dtype, device] g in
            let gx = Tensor.zeros(shape, dtype: dtype, device: device)
            gx.backend.scatterAddLastAxis(g, indices: indices, gx)
            return [gx]
        }
    }
}

extension Tensor {
    /// The transpose of `gather(lastAxis:)`: `[..., k]` values placed into `[..., width]` zeros at
    /// `indices` (`[..., k]` int32; `-1` places nothing; repeated indices add). Differentiable.
    /// ```swift
    /// let dense = score.scattered(lastAxis: expert, width: expertCount)   // [T, k] -> [T, N]
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

/// Rows of `x` `[R, ...]` in another order: `out[i] = x[order[i]]`, where `order` is a permutation of
/// `0..<R` (int32 `[R]`) and `inverse` its inverse. Differentiable: the backward gathers the
/// gradient by `inverse` (each row moves once, so no scatter and no atomics).
/// ```swift
/// let swapped = permuteRows(x, order: Tensor([1, 0] as [Int32]), inverse: Tensor([1, 0] as [Int32]))
/// ```
public func permuteRows(_ x: Tensor, order: Tensor, inverse: Tensor) -> Tensor {
    guarantee(order.dtype == .int32 && inverse.dtype == .int32 && order.shape == [x.shape.first ?? 0] && inverse.shape == order.shape,
              "permuteRows: order \(order.shape) \(order.dtype) and inverse \(inverse.shape) must be int32 [\(x.shape.first ?? 0)] for x \(x.shape)")
    let out = Tensor.empty(x.shape, dtype: x.dtype, device: x.device)
    if x.count > 0 { x.backend.gatherRows(x.reshaped([x.shape[0], -1]), indices: order, out.reshaped([x.shape[0], -1])) }
    return out.recording("permuteRows", [x]) { g in [permuteRows(g, order: inverse, inverse: order)] }
}

/// Embedding lookup: `table` [V, D], `ids` int32 of any shape -> [ids..., D].
public func embedding(_ table: Tensor, _ ids: Tensor) -> Tensor { table.indexSelect(rows: ids) }
