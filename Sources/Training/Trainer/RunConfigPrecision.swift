import Tensors

extension RunConfig {
    /// The values `precision` accepts: `fp32`; `bf16` (CUDA only: bfloat16 activations and GEMM
    /// operands, float32 master weights); `tf32` (float32 weights and activations, float32 GEMMs on TF32
    /// tensor cores; on the CPU, which has no TF32, it computes exactly as fp32).
    public static let precisionNames = ["fp32", "bf16", "tf32"]

    /// Whether float32 GEMMs run on TF32 tensor cores (`precision` tf32; a no-op on the CPU).
    public var usesTF32: Bool { precision == "tf32" }

    /// Runs `body` with the calling thread's TF32 switch (`Backends.withTF32`) set for this run's
    /// precision (on for tf32, off for fp32 and bf16), restoring the previous setting afterwards.
    public func withMathMode<R>(_ body: () throws -> R) rethrows -> R {
        try Backends.withTF32(usesTF32, body)
    }
}
