/// The raw memory source behind a ``CachingAllocator``: `cuMemAlloc`/`cuMemFree` on a GPU
/// (``DriverMemoryBackend``), or a fake in tests, so the bookkeeping runs on machines without a GPU.
public protocol DeviceMemoryBackend: AnyObject {
    /// Allocates `byteCount` bytes; returns nil when the device is out of memory, throws on any other failure.
    func allocateRaw(byteCount: Int) throws -> CUdeviceptr?
    /// Returns memory from ``allocateRaw(byteCount:)``.
    func freeRaw(_ address: CUdeviceptr)
    /// Free and total memory of the device, for out-of-memory messages.
    func memoryInfo() -> (free: Int, total: Int)
    /// Waits until no enqueued work can still touch memory about to be released.
    func synchronize()
}

/// A block handed out by ``CachingAllocator/allocate(byteCount:)``.
public struct DeviceAllocation: Sendable, Hashable {
    /// The device address (256-byte aligned or better).
    public let address: CUdeviceptr
    /// The size that was asked for.
    public let byteCount: Int
    /// The size of the block reserved for it (≥ `byteCount`; what ``AllocatorStatistics/allocatedBytes`` counts).
    public let blockSize: Int
}

/// Counters of a ``CachingAllocator``; all exact, in bytes or counts.
public struct AllocatorStatistics: Sendable, Equatable {
    /// Bytes in blocks handed out and not yet freed.
    public var allocatedBytes = 0
    /// Bytes obtained from the device (`cuMemAlloc`) and not yet returned: in use plus cached.
    public var reservedBytes = 0
    /// The highest `allocatedBytes` since creation or ``CachingAllocator/resetPeakStatistics()``.
    public var peakAllocatedBytes = 0
    /// The highest `reservedBytes` since creation or ``CachingAllocator/resetPeakStatistics()``.
    public var peakReservedBytes = 0
    /// Blocks handed out and not yet freed.
    public var allocationCount = 0
    /// Segments (device allocations) currently held.
    public var segmentCount = 0
    /// `cuMemAlloc` calls that succeeded, over the allocator's life.
    public var deviceAllocationCalls = 0
    /// `cuMemFree` calls, over the allocator's life.
    public var deviceFreeCalls = 0
    /// Times an allocation failed on the device and the cache was emptied to retry it.
    public var outOfMemoryRetries = 0
}

/// A stream-ordered caching allocator for one device, in the manner of PyTorch's CUDA allocator.
///
/// - Sizes are rounded up to 512 bytes.
/// - Requests under 1 MiB come from a *small* pool of 2 MiB segments; larger ones from a *large* pool whose
///   segments are the request rounded up to 2 MiB. Keeping them apart keeps small tensors from pinning
///   large segments.
/// - A request takes the smallest cached free block that fits (best fit); the rest of the block is split
///   off as a new free block (small pool: any remainder; large pool: remainders of 1 MiB or more).
/// - A freed block merges with free neighbours of its segment, so a training step that allocates and frees
///   the same sizes every iteration settles after the first one and never calls `cuMemAlloc` again.
/// - Out of memory on the device: the cache is emptied (after synchronizing) and the allocation retried
///   once; then ``CUDAError/outOfMemory(device:requested:allocated:reserved:free:total:)`` is thrown.
///
/// Stream order: a freed block may be handed out again at once, because all work of this device is
/// enqueued on one stream, where later work runs after earlier work. Work on another stream must not use
/// memory from here without ordering that stream against the device's stream with an event.
/// Thread-safe.
public final class CachingAllocator: @unchecked Sendable {
    /// Block sizes are multiples of this.
    public static let blockRounding = 512
    /// Requests below this go to the small pool.
    public static let smallRequestLimit = 1 << 20
    /// Small-pool segments are this size; large-pool segments are multiples of it.
    public static let segmentGranularity = 2 << 20

    /// The size of the block a request of `byteCount` bytes gets at least.
    public static func roundedSize(_ byteCount: Int) -> Int {
        roundUp(max(byteCount, 1), toMultipleOf: blockRounding)
    }

    /// The size of the segment allocated from the device when no cached block fits a block of `size`.
    public static func segmentSize(forBlockSize size: Int) -> Int {
        size < smallRequestLimit ? segmentGranularity : roundUp(size, toMultipleOf: segmentGranularity)
    }

    private struct Block {
        var size: Int
        var segment: CUdeviceptr
        var isFree: Bool
    }

    private struct Segment {
        var size: Int
        var isSmall: Bool
        /// The pool whose free lists its free blocks are on: 0 shared, else a capture pool.
        var pool: Int
    }

    private struct PoolFreeLists {
        var small = FreeList()
        var large = FreeList()

        func bestFit(_ size: Int, small isSmall: Bool) -> (size: Int, address: CUdeviceptr)? {
            (isSmall ? small : large).bestFit(size)
        }

        mutating func insert(size: Int, address: CUdeviceptr, small isSmall: Bool) {
            if isSmall { small.insert(size: size, address: address) } else { large.insert(size: size, address: address) }
        }

        mutating func remove(size: Int, address: CUdeviceptr, small isSmall: Bool) {
            if isSmall { small.remove(size: size, address: address) } else { large.remove(size: size, address: address) }
        }
    }

    /// Free blocks ordered by (size, address), for best-fit lookup by binary search.
    private struct FreeList {
        private(set) var entries: [(size: Int, address: CUdeviceptr)] = []

        private func lowerBound(size: Int, address: CUdeviceptr) -> Int {
            var low = 0
            var high = entries.count
            while low < high {
                let mid = (low + high) / 2
                let entry = entries[mid]
                if entry.size < size || (entry.size == size && entry.address < address) {
                    low = mid + 1
                } else {
                    high = mid
                }
            }
            return low
        }

        mutating func insert(size: Int, address: CUdeviceptr) {
            entries.insert((size, address), at: lowerBound(size: size, address: address))
        }

        mutating func remove(size: Int, address: CUdeviceptr) {
            let index = lowerBound(size: size, address: address)
            guarantee(index < entries.count && entries[index].address == address,
                         "CachingAllocator: free list lost block \(address)")
            entries.remove(at: index)
        }

        /// The smallest block of at least `size` bytes.
        func bestFit(_ size: Int) -> (size: Int, address: CUdeviceptr)? {
            let index = lowerBound(size: size, address: 0)
            return index < entries.count ? entries[index] : nil
        }
    }

    /// The device this allocator serves, for messages.
    public let deviceIndex: Int
    private let backend: DeviceMemoryBackend
    private let lock = Lock()
    private var blocks: [CUdeviceptr: Block] = [:]          // every block, free or in use, by start address
    private var blockEndingAt: [CUdeviceptr: CUdeviceptr] = [:]  // end address → start address, to find the left neighbour
    private var segments: [CUdeviceptr: Segment] = [:]
    private var freeLists: [Int: PoolFreeLists] = [0: PoolFreeLists()]
    /// The pool allocations come from: 0, or the capture pool while a graph is captured.
    private var activePool = 0
    private var nextPool = 1
    /// Shared blocks freed while a capture pool was active, by pool: held until that pool is released.
    private var heldForPool: [Int: [CUdeviceptr]] = [:]
    private var stats = AllocatorStatistics()

    public init(backend: DeviceMemoryBackend, deviceIndex: Int = 0) {
        self.backend = backend
        self.deviceIndex = deviceIndex
    }

    /// A snapshot of the counters.
    public var statistics: AllocatorStatistics {
        lock.withLock { stats }
    }

    /// Restarts the peaks from the current values.
    public func resetPeakStatistics() {
        lock.withLock {
            stats.peakAllocatedBytes = stats.allocatedBytes
            stats.peakReservedBytes = stats.reservedBytes
        }
    }

    /// Hands out a block of at least `byteCount` bytes.
    /// - Throws: ``CUDAError/outOfMemory(device:requested:allocated:reserved:free:total:)`` when the device has
    ///   no room even after the cache was released; other backend errors as they come.
    public func allocate(byteCount: Int) throws -> DeviceAllocation {
        guarantee(byteCount >= 0, "CachingAllocator.allocate: negative byteCount \(byteCount)")
        let size = Self.roundedSize(byteCount)
        let isSmall = size < Self.smallRequestLimit
        return try lock.withLock {
            var address: CUdeviceptr
            var blockSize: Int
            let pool = activePool
            if let found = freeLists[pool]!.bestFit(size, small: isSmall) {
                removeFree(size: found.size, address: found.address, small: isSmall, pool: pool)
                address = found.address
                blockSize = found.size
            } else {
                let segmentSize = Self.segmentSize(forBlockSize: size)
                address = try allocateSegment(segmentSize, requested: byteCount)
                segments[address] = Segment(size: segmentSize, isSmall: isSmall, pool: pool)
                blocks[address] = Block(size: segmentSize, segment: address, isFree: true)
                blockEndingAt[address + CUdeviceptr(segmentSize)] = address
                blockSize = segmentSize
                stats.reservedBytes += segmentSize
                stats.segmentCount += 1
                stats.peakReservedBytes = max(stats.peakReservedBytes, stats.reservedBytes)
            }

            let remainder = blockSize - size
            let shouldSplit = isSmall ? remainder >= Self.blockRounding : remainder >= Self.smallRequestLimit
            let segment = blocks[address]!.segment
            if shouldSplit {
                let rest = address + CUdeviceptr(size)
                blocks[rest] = Block(size: remainder, segment: segment, isFree: true)
                blockEndingAt[rest + CUdeviceptr(remainder)] = rest
                blockEndingAt[rest] = address
                insertFree(size: remainder, address: rest, small: isSmall, pool: pool)
                blockSize = size
            }
            blocks[address] = Block(size: blockSize, segment: segment, isFree: false)

            stats.allocatedBytes += blockSize
            stats.allocationCount += 1
            stats.peakAllocatedBytes = max(stats.peakAllocatedBytes, stats.allocatedBytes)
            return DeviceAllocation(address: address, byteCount: byteCount, blockSize: blockSize)
        }
    }

    /// Returns a block to the cache (not to the device: see ``emptyCache()``).
    /// Freeing an address this allocator did not hand out, or freeing twice, stops the program.
    ///
    /// While a capture pool is active, a shared block is not cached again until that pool is
    /// released: the captured graph may read it on every replay.
    public func free(_ address: CUdeviceptr) {
        lock.withLock {
            guard let block = blocks[address], !block.isFree else {
                fatalError("CachingAllocator.free: 0x\(String(address, radix: 16)) on device \(deviceIndex) "
                    + "was not allocated by this allocator or was already freed")
            }
            if activePool != 0 && segments[block.segment]!.pool == 0 {
                heldForPool[activePool, default: []].append(address)
                return
            }
            release(address)
        }
    }

    /// Begins a capture pool: until ``endCapturePool()``, every allocation comes from segments of
    /// its own, which nothing outside it is handed while it lives (a captured graph replays into
    /// them). Returns its id for ``releaseCapturePool(_:)``.
    public func beginCapturePool() -> Int {
        lock.withLock {
            guarantee(activePool == 0, "CachingAllocator: capture pool \(activePool) is active already")
            activePool = nextPool
            nextPool += 1
            freeLists[activePool] = PoolFreeLists()
            return activePool
        }
    }

    /// Allocations come from the shared pool again; the capture pool keeps its blocks.
    public func endCapturePool() {
        lock.withLock { activePool = 0 }
    }

    /// Gives a capture pool's segments to the shared pool and caches the shared blocks freed while
    /// it was active (its graph is gone: nothing replays into them).
    public func releaseCapturePool(_ pool: Int) {
        lock.withLock {
            guarantee(pool != 0 && pool != activePool, "CachingAllocator: capture pool \(pool) cannot be released now")
            guard let lists = freeLists.removeValue(forKey: pool) else { return }
            for base in segments.keys where segments[base]!.pool == pool { segments[base]!.pool = 0 }
            for (entries, small) in [(lists.small.entries, true), (lists.large.entries, false)] {
                for entry in entries { insertFree(size: entry.size, address: entry.address, small: small, pool: 0) }
            }
            for address in heldForPool.removeValue(forKey: pool) ?? [] { release(address) }
        }
    }

    /// Whether `address` starts a block, free or not, of a capture pool's segment (for tests).
    public func isInCapturePool(_ address: CUdeviceptr) -> Bool {
        lock.withLock { blocks[address].map { segments[$0.segment]!.pool != 0 } ?? false }
    }

    /// Returns every wholly free segment to the device with `cuMemFree` (after waiting for the GPU).
    public func emptyCache() {
        lock.withLock { releaseFreeSegments() }
    }

    // MARK: - Internals (called with the lock held)

    /// Returns a block in use to its pool's free lists, merged with free neighbours.
    private func release(_ address: CUdeviceptr) {
        var block = blocks[address]!
        stats.allocatedBytes -= block.size
        stats.allocationCount -= 1
        let segment = segments[block.segment]!
        let isSmall = segment.isSmall, pool = segment.pool
        var start = address
        block.isFree = true

        // Merge with the right neighbour.
        let end = start + CUdeviceptr(block.size)
        if let right = blocks[end], right.isFree, right.segment == block.segment {
            removeFree(size: right.size, address: end, small: isSmall, pool: pool)
            blocks[end] = nil
            blockEndingAt[end] = nil
            block.size += right.size
        }
        // Merge with the left neighbour.
        if let leftStart = blockEndingAt[start], let left = blocks[leftStart], left.isFree,
           left.segment == block.segment {
            removeFree(size: left.size, address: leftStart, small: isSmall, pool: pool)
            blocks[start] = nil
            blockEndingAt[start] = nil
            start = leftStart
            block.size += left.size
        }
        blocks[start] = block
        blockEndingAt[start + CUdeviceptr(block.size)] = start
        insertFree(size: block.size, address: start, small: isSmall, pool: pool)
    }

    private func insertFree(size: Int, address: CUdeviceptr, small: Bool, pool: Int) {
        freeLists[pool]!.insert(size: size, address: address, small: small)
    }

    private func removeFree(size: Int, address: CUdeviceptr, small: Bool, pool: Int) {
        freeLists[pool]!.remove(size: size, address: address, small: small)
    }

    private func allocateSegment(_ size: Int, requested: Int) throws -> CUdeviceptr {
        if let address = try backend.allocateRaw(byteCount: size) {
            stats.deviceAllocationCalls += 1
            return address
        }
        stats.outOfMemoryRetries += 1
        releaseFreeSegments()
        if let address = try backend.allocateRaw(byteCount: size) {
            stats.deviceAllocationCalls += 1
            return address
        }
        let info = backend.memoryInfo()
        throw CUDAError.outOfMemory(device: deviceIndex, requested: requested, allocated: stats.allocatedBytes,
                                    reserved: stats.reservedBytes, free: info.free, total: info.total)
    }

    private func releaseFreeSegments() {
        // A capture pool's segments stay: its graph replays into them.
        let releasable = segments.filter { base, segment in
            guard segment.pool == 0, let block = blocks[base] else { return false }
            return block.isFree && block.size == segment.size
        }
        guard !releasable.isEmpty else { return }
        // Kernels enqueued before the blocks were freed may still be reading them.
        backend.synchronize()
        for (base, segment) in releasable {
            removeFree(size: segment.size, address: base, small: segment.isSmall, pool: 0)
            blocks[base] = nil
            blockEndingAt[base + CUdeviceptr(segment.size)] = nil
            segments[base] = nil
            backend.freeRaw(base)
            stats.deviceFreeCalls += 1
            stats.reservedBytes -= segment.size
            stats.segmentCount -= 1
        }
    }
}

/// `cuMemAlloc_v2` / `cuMemFree_v2` on one device.
final class DriverMemoryBackend: DeviceMemoryBackend {
    // Unowned: the device owns its allocator, which owns this backend; devices live until the process ends.
    unowned let device: CUDADevice

    init(device: CUDADevice) {
        self.device = device
    }

    func allocateRaw(byteCount: Int) throws -> CUdeviceptr? {
        device.makeCurrent()
        var address: CUdeviceptr = 0
        let result = device.driver.cuMemAlloc(&address, byteCount)
        if result == DriverConstant.errorOutOfMemory { return nil }
        try device.driver.check(result, "cuMemAlloc_v2(\(byteCount) bytes) on device \(device.index)")
        return address
    }

    func freeRaw(_ address: CUdeviceptr) {
        device.makeCurrent()
        device.driver.require(device.driver.cuMemFree(address), "cuMemFree_v2 on device \(device.index)")
    }

    func memoryInfo() -> (free: Int, total: Int) {
        device.memoryInfo()
    }

    func synchronize() {
        device.synchronize()
    }
}
