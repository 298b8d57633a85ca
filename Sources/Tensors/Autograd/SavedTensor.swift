/// A tensor a node's backward rule reads, let go by the rule once its last reader is enqueued, so
/// the rest of the rule runs without it. A fused layer's rule keeps activations for several
/// products; held to the end, they all stay live while the rule allocates the gradients (the
/// experts' MLP held `a`, `h` and `dh`, three `[N, H]` buffers, where two are needed: perf-notes
/// change 38).
///
/// Safe because a rule runs once (the graph is freed as it is walked) and a freed block is handed
/// out again only to work enqueued after the kernels that read it (the CUDA allocator is
/// stream-ordered; the GEMM lanes join the stream before they return).
final class SavedTensor {
    private var tensor: Tensor?

    init(_ tensor: Tensor) { self.tensor = tensor }

    /// The tensor, for its last reader; this holder lets go of it.
    func take() -> Tensor {
        guard let tensor else { fatalError("SavedTensor.take(): the tensor was taken already (a backward rule ran twice?)") }
        self.tensor = nil
        return tensor
    }
}
