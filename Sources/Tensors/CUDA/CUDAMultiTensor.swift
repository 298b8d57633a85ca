import CUDA

// Operations over many tensors in one launch (`ReductionKernels`: `sum_squares_chunks`,
// `scale_chunks`; `OptimizerKernels`: `adamw_chunks`; `MovementKernels`: `cast_f32_bf16_chunks`):
// a table of chunks is uploaded with the launch, one block per chunk. For a model's gradients, its
// optimizer step and its weights' bfloat16 copies this replaces one or more launches per parameter
// with one to three.

extension CUDABackend {
    public func sumOfSquares(_ tensors: [Tensor], _ out: Tensor) {
        let (table, chunks) = uploadChunkTable(tensors)
        guard let table else { return fill(out, value: 0) }
        let partial = Tensor.empty([chunks], dtype: out.dtype, device: device)
        launch(kernel("sum_squares_chunks", tensors[0].dtype), grid: (chunks, 1, 1), block: (256, 1, 1), stream: gpu.stream,
               arguments: [.pointer(CUdeviceptr(table.address)), partial.arg])
        launch(kernel("sum_squares_finish", tensors[0].dtype), grid: (1, 1, 1), block: (1024, 1, 1), stream: gpu.stream,
               arguments: [partial.arg, .int64(Int64(chunks)), out.arg])
        withExtendedLifetime(table) {}
    }

    public func scaleInPlace(_ tensors: [Tensor], by factor: Double) {
        let (table, chunks) = uploadChunkTable(tensors)
        guard let table else { return }
        launch(kernel("scale_chunks", tensors[0].dtype), grid: (chunks, 1, 1), block: (256, 1, 1), stream: gpu.stream,
               arguments: [.pointer(CUdeviceptr(table.address)), .double(factor)])
        withExtendedLifetime(table) {}
    }

    public func adamW(_ tensors: [AdamWTensors], _ s: AdamWStep, scheduled: ScheduledStep?) {
        // AdamWChunk: p, g, m, v, n, then the weight decay's float bits in the low half of a word.
        var entries: [UInt64] = []
        for t in tensors where t.parameter.count > 0 {
            guarantee([t.parameter, t.gradient, t.m, t.v].allSatisfy { $0.dtype == .float32 && $0.count == t.parameter.count },
                      "adamW on CUDA: float32 parameters, gradients and moments of one size")
            for start in stride(from: 0, to: t.parameter.count, by: Self.chunkElements) {
                let offset = UInt64(start * 4)
                entries += [t.parameter, t.gradient, t.m, t.v].map { $0.pointer + offset }
                entries += [UInt64(min(Self.chunkElements, t.parameter.count - start)), UInt64(t.weightDecay.bitPattern)]
            }
        }
        guard !entries.isEmpty else { return }
        if let squares = scheduled?.gradientSquares {
            guarantee(squares.dtype == .float32, "adamW on CUDA: a float32 squared gradient norm")
        }
        let table = allocate(byteCount: entries.count * 8)
        gpu.stream.upload(entries, to: CUdeviceptr(table.address))
        let values = ScheduledStep.values(learningRate: Double(s.learningRate), beta1: Double(s.beta1), beta2: Double(s.beta2), step: s.step)
        launch(kernel("adamw_chunks", .float32), grid: (entries.count / 6, 1, 1), block: (256, 1, 1), stream: gpu.stream,
               arguments: [.pointer(CUdeviceptr(table.address)), .float(s.beta1), .float(s.beta2), .float(s.epsilon), .float(values[0]),
                           .float(values[1]), .float(values[2]), scheduled?.schedule.arg ?? .pointer(0),
                           scheduled?.gradientSquares.arg ?? .pointer(0), .float(Float(scheduled?.maxNorm ?? 0))])
        withExtendedLifetime(table) {}
    }

    /// float32 to bfloat16 over every pair in one launch (`cast_f32_bf16_chunks`, a block a chunk):
    /// a mixed-precision forward's weight copies (`CastPlan`). Other dtypes: one `cast` a pair.
    public func castMany(_ xs: [Tensor], to outs: [Tensor]) {
        guarantee(xs.count == outs.count, "castMany: \(xs.count) tensors into \(outs.count)")
        var entries: [Int64] = []   // (source, destination, count) a chunk
        for (x, out) in zip(xs, outs) {
            guarantee(x.count == out.count, "castMany: \(x.count) elements into \(out.count)")
            guard x.dtype == .float32, out.dtype == .bfloat16 else {
                cast(x, to: out)
                continue
            }
            for start in stride(from: 0, to: x.count, by: Self.chunkElements) {
                entries += [Int64(x.pointer) + Int64(start * 4), Int64(out.pointer) + Int64(start * 2),
                            Int64(min(Self.chunkElements, x.count - start))]
            }
        }
        guard !entries.isEmpty else { return }
        let table = allocate(byteCount: entries.count * 8)
        gpu.stream.upload(entries, to: CUdeviceptr(table.address))
        launch(kernel("cast_f32_bf16_chunks", nil), grid: (entries.count / 3, 1, 1), block: (256, 1, 1), stream: gpu.stream,
               arguments: [.pointer(CUdeviceptr(table.address))])
        withExtendedLifetime(table) {}
    }

    /// Elements of one tensor a block takes in the multi-tensor kernels.
    static let chunkElements = 65536

    /// The (address, count) int64 pairs of every chunk of at most 65536 elements of `tensors`, in
    /// device memory from the stream-ordered allocator (the caller keeps it alive until its launches
    /// are enqueued), and the chunk count; nil when no tensor has elements.
    private func uploadChunkTable(_ tensors: [Tensor]) -> (Storage?, Int) {
        let chunk = Self.chunkElements
        var entries: [Int64] = []
        for t in tensors where t.count > 0 {
            guarantee(t.dtype == tensors[0].dtype, "multi-tensor op: every tensor must be \(tensors[0].dtype), got \(t.dtype)")
            for start in stride(from: 0, to: t.count, by: chunk) {
                entries += [Int64(t.pointer) + Int64(start * t.dtype.byteSize), Int64(min(chunk, t.count - start))]
            }
        }
        guard !entries.isEmpty else { return (nil, 0) }
        let table = allocate(byteCount: entries.count * 8)
        gpu.stream.upload(entries, to: CUdeviceptr(table.address))
        return (table, entries.count / 2)
    }
}
