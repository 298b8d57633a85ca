import CUDA

// Operations over many tensors in one launch (`ReductionKernels`: `sum_squares_chunks`,
// `scale_chunks`): a table of (address, count) chunks is uploaded with the launch, one block per
// chunk. For a model's gradients this replaces several launches per parameter with two or three.

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

    /// The (address, count) int64 pairs of every chunk of at most 65536 elements of `tensors`, in
    /// device memory from the stream-ordered allocator (the caller keeps it alive until its launches
    /// are enqueued), and the chunk count; nil when no tensor has elements.
    private func uploadChunkTable(_ tensors: [Tensor]) -> (Storage?, Int) {
        let chunk = 65536
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
