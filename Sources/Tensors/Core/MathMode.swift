import CUDA

extension Backends {
    /// Whether float32 matrix products enqueued from the calling thread use TF32 tensor cores on CUDA
    /// devices (inputs rounded to 10 mantissa bits, float32 accumulation: about 1e-3 relative error
    /// instead of 1e-6). The CPU has no TF32: there float32 stays float32 whatever this says.
    ///
    /// Per thread (`CUBLAS.threadAllowsTF32`), so a TF32 run on one thread leaves other threads exact.
    /// `CUDABackend.allowTF32` is the older switch for a whole device; either one turns TF32 on.
    public static var threadAllowsTF32: Bool {
        get { CUBLAS.threadAllowsTF32 }
        set { CUBLAS.threadAllowsTF32 = newValue }
    }

    /// Runs `body` with this thread's TF32 switch set to `allowed`, then restores the previous setting.
    /// ```swift
    /// let y = Backends.withTF32(true) { a.matmul(b) }   // a, b float32 on a GPU
    /// ```
    public static func withTF32<R>(_ allowed: Bool, _ body: () throws -> R) rethrows -> R {
        let previous = threadAllowsTF32
        threadAllowsTF32 = allowed
        defer { threadAllowsTF32 = previous }
        return try body()
    }
}
