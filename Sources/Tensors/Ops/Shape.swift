// Reshape (free), row slices (free views), transpose of the last two axes (a copy), column slices,
// concatenation and splitting along the first or last axis (copies through `copyBlock`).

extension Tensor {
    /// The same storage under another shape; one dimension may be -1.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        let s = ShapeCheck.reshape(shape, newShape).orStop()
        if s == shape { return self }
        let out = Tensor(storage: storage, shape: s, dtype: dtype, byteOffset: byteOffset)
        return out.recording("reshape", [self]) { [shape] g in [g.reshaped(shape)] }
    }

    /// Rows `range` of the first axis, sharing storage (no copy): contiguous in a row-major tensor.
    public func rows(_ range: Range<Int>) -> Tensor {
        guarantee(rank >= 1 && range.lowerBound >= 0 && range.upperBound <= shape[0],
                     "rows(\(range)): outside the first axis of \(shape)")
        // All rows: the tensor itself, so that its gradient is not copied into a zeroed full-size buffer.
        if range == 0..<shape[0] { return self }
        let rowElements = count / Swift.max(shape[0], 1)
        let out = Tensor(storage: storage, shape: [range.count] + shape.dropFirst(), dtype: dtype,
                         byteOffset: byteOffset + range.lowerBound * rowElements * dtype.byteSize)
        return out.recording("rows", [self]) { [shape, dtype, device] g in
            let full = Tensor.zeros(shape, dtype: dtype, device: device)
            full.backend.copyBlock(from: g, offset: 0, stride: 0, to: full, offset: range.lowerBound * rowElements,
                                   stride: 0, rows: 1, cols: g.count)
            return [full]
        }
    }

    /// Swaps the last two axes: [..., M, N] -> [..., N, M] (a copy).
    public func transposed() -> Tensor {
        guarantee(rank >= 2, "transposed(): needs 2 or more dimensions, tensor has shape \(shape)")
        var s = shape
        s.swapAt(rank - 1, rank - 2)
        let out = Tensor.empty(s, dtype: dtype, device: device)
        backend.transposeLastTwo(self, out)
        return out.recording("transpose", [self]) { g in [g.transposed()] }
    }

    /// Concatenates along axis 0 or -1 (the last).
    public static func concat(_ tensors: [Tensor], axis: Int) -> Tensor {
        let outShape = ShapeCheck.concat(tensors.map(\.shape), axis: axis).orStop()
        let first = tensors[0]
        for t in tensors {
            guarantee(t.dtype == first.dtype && t.device == first.device,
                         "concat: tensors differ in dtype or device (\(t.dtype) on \(t.device) vs \(first.dtype) on \(first.device))")
        }
        let out = Tensor.empty(outShape, dtype: first.dtype, device: first.device)
        let lastAxis = axis != 0
        let outCols = lastAxis ? outShape[outShape.count - 1] : out.count
        var at = 0
        for t in tensors {
            let cols = lastAxis ? t.lastDimension : t.count
            out.backend.copyBlock(from: t, offset: 0, stride: cols, to: out, offset: at, stride: outCols,
                                  rows: lastAxis ? t.rowCount : 1, cols: cols)
            at += cols
        }
        let sizes = tensors.map { lastAxis ? $0.lastDimension : $0.shape[0] }
        return out.recording("concat", tensors) { g in g.split(sizes, axis: axis) }
    }

    /// Splits along axis 0 or -1 into pieces of the given sizes.
    public func split(_ sizes: [Int], axis: Int) -> [Tensor] {
        let lastAxis = axis != 0
        guarantee(axis == 0 || axis == -1 || axis == rank - 1, "split(axis: \(axis)) on \(shape): use 0 or -1")
        let a = lastAxis ? rank - 1 : 0
        guarantee(sizes.reduce(0, +) == shape[a], "split: sizes \(sizes) do not add up to \(shape[a]) (axis \(axis) of \(shape))")
        if !lastAxis {
            var at = 0
            return sizes.map { n in defer { at += n }; return rows(at..<(at + n)).contiguousCopy() }
        }
        var at = 0
        return sizes.map { n in defer { at += n }; return slice(lastAxis: at..<(at + n)) }
    }

    /// Columns `range` of the last axis, as a copy: `[..., C] -> [..., range.count]` (differentiable:
    /// the gradient lands in those columns, zeros elsewhere). Any dtype; int32 records no graph.
    /// ```swift
    /// let second = topValues.slice(lastAxis: 1..<2)   // [B, k] -> [B, 1]: the second-largest of each row
    /// ```
    public func slice(lastAxis range: Range<Int>) -> Tensor {
        guarantee(rank >= 1 && range.lowerBound >= 0 && range.upperBound <= lastDimension,
                  "slice(lastAxis: \(range)): outside the last axis of \(shape)")
        let n = range.count, start = range.lowerBound
        let piece = Tensor.empty(Array(shape.dropLast()) + [n], dtype: dtype, device: device)
        backend.copyBlock(from: self, offset: start, stride: lastDimension, to: piece, offset: 0, stride: n, rows: rowCount, cols: n)
        return piece.recording("slice", [self]) { [shape, dtype, device, lastDimension, rowCount] g in
            let full = Tensor.zeros(shape, dtype: dtype, device: device)
            full.backend.copyBlock(from: g, offset: 0, stride: n, to: full, offset: start, stride: lastDimension, rows: rowCount, cols: n)
            return [full]
        }
    }

    /// A fresh copy with its own storage (differentiable).
    public func contiguousCopy() -> Tensor {
        let out = Tensor.empty(shape, dtype: dtype, device: device)
        backend.copy(self, to: out)
        return out.recording("copy", [self]) { g in [g] }
    }
}
