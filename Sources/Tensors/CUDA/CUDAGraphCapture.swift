import CUDA

extension CUDAGraph: ReplayableWork {
    public func replay() { launch() }
}

extension CUDABackend: GraphCapturing {
    /// Records `body`'s work on this device's stream (see `CUDAGraph`). While it runs, random
    /// draws read `randomSalt` and grouped products with device-side sizes take our grouped
    /// kernel under `.automatic` (one GEMM per expert would read the sizes back).
    public func captureGraph(randomSalt: Tensor?, _ body: () throws -> Void) throws -> ReplayableWork {
        if let randomSalt {
            guarantee(randomSalt.device == device && randomSalt.dtype == .int32 && randomSalt.count == 1,
                      "captureGraph: the random salt must be [1] int32 on \(device)")
        }
        captureSalt.withLock { $0 = randomSalt?.pointer ?? 0 }
        defer { captureSalt.withLock { $0 = 0 } }
        return try gpu.captureGraph(body)
    }
}
