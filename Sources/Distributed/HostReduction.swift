import Tensors

/// Elementwise reductions over host buffers, shared by the thread group (which combines the ranks'
/// tensors itself) and the MPI group (whose bfloat16 path reduces in float32).
///
/// Inputs are combined in the order given (rank order), so every rank of a thread group computes
/// bit-identical results. bfloat16 accumulates in float32 and rounds once at the end; an int32
/// average is the sum divided by `W`, rounded toward zero (what MPI's sum-then-divide gives).
enum HostReduction {
    /// `out[i] = op(inputs[0][i], inputs[1][i], ...)` for `count` elements of `dtype`; `out` may be one of the inputs.
    static func reduce(_ inputs: [UnsafeRawPointer], count: Int, dtype: DType, op: ReduceOperation,
                       into out: UnsafeMutableRawPointer) {
        guard count > 0, !inputs.isEmpty else { return }
        switch dtype {
        case .float32:
            combine(inputs, count, out.assumingMemoryBound(to: Float.self), op, add: +, divide: { $0 / Float($1) })
        case .float64:
            combine(inputs, count, out.assumingMemoryBound(to: Double.self), op, add: +, divide: { $0 / Double($1) })
        case .int32:
            // Integer sums wrap, as MPI's do, instead of trapping.
            combine(inputs, count, out.assumingMemoryBound(to: Int32.self), op, add: &+, divide: { $0 / Int32($1) })
        case .bfloat16:
            // Float32 accumulator, one rounding at the end, as the MPI and NCCL paths do.
            let accumulator = UnsafeMutablePointer<Float>.allocate(capacity: count)
            defer { accumulator.deallocate() }
            let words = inputs.map { $0.assumingMemoryBound(to: UInt16.self) }
            for i in 0..<count { accumulator[i] = BFloat16Bits.toFloat(words[0][i]) }
            for source in words.dropFirst() {
                for i in 0..<count {
                    let x = BFloat16Bits.toFloat(source[i])
                    accumulator[i] = op == .max ? Swift.max(accumulator[i], x) : accumulator[i] + x
                }
            }
            if op == .average { for i in 0..<count { accumulator[i] /= Float(inputs.count) } }
            let result = out.assumingMemoryBound(to: UInt16.self)
            for i in 0..<count { result[i] = BFloat16Bits.fromFloat(accumulator[i]) }
        }
    }

    /// Sums, averages or maxes in the element type itself (float32 in float32, as MPI does).
    private static func combine<T: Comparable>(
        _ inputs: [UnsafeRawPointer], _ count: Int, _ out: UnsafeMutablePointer<T>, _ op: ReduceOperation,
        add: (T, T) -> T, divide: (T, Int) -> T
    ) {
        // Accumulate into a scratch buffer: `out` may alias an input that is read later.
        let accumulator = UnsafeMutablePointer<T>.allocate(capacity: count)
        defer { accumulator.deallocate() }
        accumulator.initialize(from: inputs[0].assumingMemoryBound(to: T.self), count: count)
        for input in inputs.dropFirst() {
            let source = input.assumingMemoryBound(to: T.self)
            if op == .max {
                for i in 0..<count where source[i] > accumulator[i] { accumulator[i] = source[i] }
            } else {
                for i in 0..<count { accumulator[i] = add(accumulator[i], source[i]) }
            }
        }
        if op == .average { for i in 0..<count { accumulator[i] = divide(accumulator[i], inputs.count) } }
        out.update(from: accumulator, count: count)
    }

    /// bfloat16 words → float32 (the MPI group reduces bfloat16 in float32).
    static func widen(_ words: UnsafeRawPointer, count: Int, into out: UnsafeMutablePointer<Float>) {
        let source = words.assumingMemoryBound(to: UInt16.self)
        for i in 0..<count { out[i] = BFloat16Bits.toFloat(source[i]) }
    }

    /// float32 → bfloat16 words, rounding to nearest even.
    static func narrow(_ values: UnsafePointer<Float>, count: Int, into words: UnsafeMutableRawPointer) {
        let out = words.assumingMemoryBound(to: UInt16.self)
        for i in 0..<count { out[i] = BFloat16Bits.fromFloat(values[i]) }
    }
}
