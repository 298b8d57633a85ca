import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A block of memory on one device, returned to its allocator when the last reference goes away.
///
/// `address` is a host pointer for `.cpu` and a device pointer (`CUdeviceptr`) for `.cuda`; only
/// the owning backend may dereference it, so no op assumes host-readable memory.
public final class Storage: @unchecked Sendable {
    public let address: UInt
    public let byteCount: Int
    public let device: Device
    private let release: @Sendable (UInt, Int) -> Void

    public init(address: UInt, byteCount: Int, device: Device, release: @escaping @Sendable (UInt, Int) -> Void) {
        self.address = address
        self.byteCount = byteCount
        self.device = device
        self.release = release
    }

    deinit { release(address, byteCount) }
}

/// Allocation counters of one device, in bytes.
public struct MemoryStatistics: Sendable, Equatable {
    public var allocated: Int
    public var reserved: Int
    public var peak: Int
}

/// Host memory for CPU tensors: 64-byte aligned (a cache line, and whole SIMD vectors).
final class HostAllocator: Sendable {
    static let shared = HostAllocator()
    private let allocated = Atomic<Int>(0)
    private let peak = Atomic<Int>(0)

    func allocate(byteCount: Int) -> Storage {
        var raw: UnsafeMutableRawPointer?
        let size = max(byteCount, 64)
        guard posix_memalign(&raw, 64, size) == 0, let raw else {
            OutOfMemory.stop(device: .cpu, byteCount: byteCount)
        }
        let now = allocated.add(size, ordering: .relaxed).newValue
        _ = peak.max(now, ordering: .relaxed)
        return Storage(address: UInt(bitPattern: raw), byteCount: byteCount, device: .cpu) { address, _ in
            free(UnsafeMutableRawPointer(bitPattern: address))
            HostAllocator.shared.allocated.subtract(size, ordering: .relaxed)
        }
    }

    var statistics: MemoryStatistics {
        let a = allocated.load(ordering: .relaxed)
        return MemoryStatistics(allocated: a, reserved: a, peak: peak.load(ordering: .relaxed))
    }

    /// Restarts the peak from the bytes allocated now (`Backends.resetPeakMemory`).
    func resetPeak() { peak.store(allocated.load(ordering: .relaxed), ordering: .relaxed) }
}
