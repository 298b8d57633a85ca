extension Backends {
    /// Restarts `device`'s peak counter (`MemoryStatistics.peak`) from the bytes allocated now, so the
    /// peak read after a piece of work is that work's: the CUDA caching allocator's
    /// `resetPeakStatistics()`, or the host allocator's on the CPU.
    ///
    /// The counters are per device and process-wide: work on other threads in between counts too.
    /// ```swift
    /// Backends.resetPeakMemory(.cuda(0))
    /// let before = Backends.backend(for: .cuda(0)).memoryStatistics.allocated
    /// layer(x).sum().backward()
    /// let extra = Backends.backend(for: .cuda(0)).memoryStatistics.peak - before
    /// ```
    public static func resetPeakMemory(_ device: Device) {
        switch backend(for: device) {
        case let cuda as CUDABackend: cuda.gpu.allocator.resetPeakStatistics()
        case is CPUBackend: HostAllocator.shared.resetPeak()
        default: break
        }
    }
}
