import Testing
@testable import CUDA

/// A device that hands out address ranges from a counter and keeps its own books,
/// so the allocator's counters can be checked against an independent record.
final class FakeDeviceMemory: DeviceMemoryBackend {
    let capacity: Int
    private(set) var live: [CUdeviceptr: Int] = [:]
    private(set) var allocateCalls = 0
    private(set) var failedCalls = 0
    private(set) var freeCalls = 0
    private(set) var synchronizeCalls = 0
    private var next: CUdeviceptr = 0x7f00_0000_0000

    init(capacity: Int) {
        self.capacity = capacity
    }

    var liveBytes: Int { live.values.reduce(0, +) }

    func allocateRaw(byteCount: Int) throws -> CUdeviceptr? {
        allocateCalls += 1
        guard liveBytes + byteCount <= capacity else {
            failedCalls += 1
            return nil
        }
        let address = next
        // Leave a gap so that segments are never adjacent.
        next += CUdeviceptr(byteCount + (4 << 20))
        live[address] = byteCount
        return address
    }

    func freeRaw(_ address: CUdeviceptr) {
        precondition(live.removeValue(forKey: address) != nil, "fake device: freeing unknown segment")
        freeCalls += 1
    }

    func memoryInfo() -> (free: Int, total: Int) {
        (capacity - liveBytes, capacity)
    }

    func synchronize() {
        synchronizeCalls += 1
    }
}

@Suite("Caching allocator bookkeeping")
struct CachingAllocatorTests {
    static let mib = 1 << 20

    /// Rounding by a second computation: multiples of 512, at least 512.
    static func expectedBlock(_ bytes: Int) -> Int {
        bytes <= 512 ? 512 : ((bytes + 511) / 512) * 512
    }

    @Test func sizesAreRoundedAndSegmentsSized() {
        #expect(CachingAllocator.roundedSize(0) == 512)
        #expect(CachingAllocator.roundedSize(1) == 512)
        #expect(CachingAllocator.roundedSize(512) == 512)
        #expect(CachingAllocator.roundedSize(513) == 1024)
        #expect(CachingAllocator.segmentSize(forBlockSize: 512) == 2 * Self.mib)
        #expect(CachingAllocator.segmentSize(forBlockSize: Self.mib - 512) == 2 * Self.mib)
        #expect(CachingAllocator.segmentSize(forBlockSize: Self.mib) == 2 * Self.mib)
        #expect(CachingAllocator.segmentSize(forBlockSize: 2 * Self.mib + 512) == 4 * Self.mib)
        #expect(CachingAllocator.segmentSize(forBlockSize: 9 * Self.mib) == 10 * Self.mib)
    }

    @Test func smallBlocksShareASegmentAndStatisticsAreExact() throws {
        let device = FakeDeviceMemory(capacity: 1 << 30)
        let allocator = CachingAllocator(backend: device)
        let sizes = [1, 100, 512, 513, 4000, 70_000]
        let blocks = try sizes.map { try allocator.allocate(byteCount: $0) }
        for (block, size) in zip(blocks, sizes) {
            #expect(block.byteCount == size)
            #expect(block.blockSize == Self.expectedBlock(size))
        }
        // Blocks do not overlap.
        let sorted = blocks.sorted { $0.address < $1.address }
        for (left, right) in zip(sorted, sorted.dropFirst()) {
            #expect(left.address + CUdeviceptr(left.blockSize) <= right.address)
        }
        let stats = allocator.statistics
        #expect(stats.allocatedBytes == sizes.map(Self.expectedBlock).reduce(0, +))
        #expect(stats.allocationCount == sizes.count)
        #expect(stats.reservedBytes == 2 * Self.mib)
        #expect(stats.segmentCount == 1)
        #expect(device.allocateCalls == 1)
        #expect(device.liveBytes == stats.reservedBytes)

        for block in blocks { allocator.free(block.address) }
        let after = allocator.statistics
        #expect(after.allocatedBytes == 0)
        #expect(after.allocationCount == 0)
        #expect(after.reservedBytes == 2 * Self.mib)
        #expect(after.peakAllocatedBytes == stats.allocatedBytes)
    }

    @Test func freedBlocksAreReusedBestFitAndLargeBlocksSplit() throws {
        let device = FakeDeviceMemory(capacity: 1 << 30)
        let allocator = CachingAllocator(backend: device)
        let big = try allocator.allocate(byteCount: 8 * Self.mib)
        let medium = try allocator.allocate(byteCount: 3 * Self.mib)   // segment of 4 MiB, 1 MiB split off
        #expect(medium.blockSize == 3 * Self.mib)
        #expect(allocator.statistics.reservedBytes == 12 * Self.mib)
        allocator.free(big.address)
        allocator.free(medium.address)

        // 3 MiB fits both the 4 MiB segment and the 8 MiB one: best fit takes the 4 MiB one.
        let again = try allocator.allocate(byteCount: 3 * Self.mib)
        #expect(again.address == medium.address)
        // 5 MiB only fits the 8 MiB segment, which is split: 5 MiB used, 3 MiB left free.
        let split = try allocator.allocate(byteCount: 5 * Self.mib)
        #expect(split.address == big.address)
        #expect(split.blockSize == 5 * Self.mib)
        let rest = try allocator.allocate(byteCount: 2 * Self.mib + 100)
        #expect(rest.address == big.address + CUdeviceptr(5 * Self.mib))
        #expect(device.allocateCalls == 2, "everything above came from the cache")
        // The remainder of 3 MiB - (2 MiB + 512) is under 1 MiB, so it stays with the block.
        #expect(rest.blockSize == 3 * Self.mib)
        #expect(allocator.statistics.allocatedBytes == 3 * Self.mib + 5 * Self.mib + 3 * Self.mib)

        // Freeing both halves merges them back into the whole segment, which a full-size request then takes.
        allocator.free(split.address)
        allocator.free(rest.address)
        let whole = try allocator.allocate(byteCount: 8 * Self.mib)
        #expect(whole.address == big.address)
        #expect(device.allocateCalls == 2)
        allocator.free(whole.address)
        allocator.free(again.address)
    }

    @Test func trainingLikePatternStopsGrowingAfterTheFirstIteration() throws {
        let device = FakeDeviceMemory(capacity: 1 << 40)
        let allocator = CachingAllocator(backend: device)
        var generator = SplitMix64(seed: 7)
        // Parameters and optimizer state live across iterations.
        let persistent = try (0..<20).map { _ in
            try allocator.allocate(byteCount: Int(generator.next() % UInt64(6 * Self.mib)) + 1)
        }
        // One step: activations allocated in the forward pass, mostly freed in reverse order by the backward
        // pass, with gradients and temporaries interleaved.
        let forwardSizes = (0..<40).map { _ in Int(generator.next() % UInt64(12 * Self.mib)) + 1 }
        let temporarySizes = (0..<30).map { _ in Int(generator.next() % 300_000) + 1 }
        var reservedAfterFirst = 0
        var deviceCallsAfterFirst = 0
        for iteration in 0..<1000 {
            var expectedAllocated = persistent.map(\.blockSize).reduce(0, +)
            var activations: [DeviceAllocation] = []
            for (index, size) in forwardSizes.enumerated() {
                activations.append(try allocator.allocate(byteCount: size))
                let temporary = try allocator.allocate(byteCount: temporarySizes[index % temporarySizes.count])
                expectedAllocated += activations.last!.blockSize
                #expect(allocator.statistics.allocatedBytes == expectedAllocated + temporary.blockSize)
                allocator.free(temporary.address)
            }
            var gradients: [DeviceAllocation] = []
            for activation in activations.reversed() {
                gradients.append(try allocator.allocate(byteCount: activation.byteCount / 2 + 1))
                allocator.free(activation.address)
            }
            for gradient in gradients { allocator.free(gradient.address) }

            let stats = allocator.statistics
            #expect(stats.allocatedBytes == persistent.map(\.blockSize).reduce(0, +))
            #expect(stats.allocationCount == persistent.count)
            #expect(stats.reservedBytes == device.liveBytes)
            if iteration == 0 {
                reservedAfterFirst = stats.reservedBytes
                deviceCallsAfterFirst = device.allocateCalls
            } else if stats.reservedBytes != reservedAfterFirst || device.allocateCalls != deviceCallsAfterFirst {
                let reserved = stats.reservedBytes
                let calls = device.allocateCalls
                Issue.record("iteration \(iteration): reserved \(reserved) (first: \(reservedAfterFirst)), device allocations \(calls) (first: \(deviceCallsAfterFirst))")
                break
            }
        }
        #expect(allocator.statistics.deviceAllocationCalls == device.allocateCalls)
        #expect(device.freeCalls == 0)
    }

    @Test func outOfMemoryEmptiesTheCacheRetriesOnceThenThrowsWithTheNumbers() throws {
        let device = FakeDeviceMemory(capacity: 10 * Self.mib)
        let allocator = CachingAllocator(backend: device, deviceIndex: 3)
        let first = try allocator.allocate(byteCount: 4 * Self.mib)
        let small = try allocator.allocate(byteCount: 1000)
        allocator.free(first.address)   // cached: 4 MiB + 2 MiB reserved, 512 B in use

        // 6 MiB does not fit next to the 6 MiB reserved; the free 4 MiB segment is released and the call retried.
        let second = try allocator.allocate(byteCount: 6 * Self.mib)
        var stats = allocator.statistics
        #expect(stats.outOfMemoryRetries == 1)
        #expect(device.freeCalls == 1)
        #expect(device.synchronizeCalls == 1, "the GPU is waited for before cached memory is released")
        #expect(stats.reservedBytes == 8 * Self.mib)
        #expect(stats.segmentCount == 2, "the small segment is in use and stays")
        #expect(device.liveBytes == stats.reservedBytes)

        // Nothing left to release: the retry fails too and the error carries the numbers.
        do {
            _ = try allocator.allocate(byteCount: 5 * Self.mib)
            Issue.record("allocation beyond capacity succeeded")
        } catch let error as CUDAError {
            #expect(error == .outOfMemory(device: 3, requested: 5 * Self.mib, allocated: 6 * Self.mib + 1024,
                                          reserved: 8 * Self.mib, free: 2 * Self.mib, total: 10 * Self.mib))
            let message = error.description
            #expect(message.contains("device 3"))
            #expect(message.contains("\(5 * Self.mib) bytes"))
        }
        stats = allocator.statistics
        #expect(stats.outOfMemoryRetries == 2)
        #expect(device.failedCalls == 3)
        allocator.free(second.address)
        allocator.free(small.address)
        allocator.emptyCache()
        #expect(allocator.statistics.reservedBytes == 0)
        #expect(device.live.isEmpty)
    }

    @Test func emptyCacheReleasesOnlyWhollyFreeSegments() throws {
        let device = FakeDeviceMemory(capacity: 1 << 30)
        let allocator = CachingAllocator(backend: device)
        let a = try allocator.allocate(byteCount: 1000)
        let b = try allocator.allocate(byteCount: 3 * Self.mib)
        let c = try allocator.allocate(byteCount: 5 * Self.mib)
        allocator.free(b.address)
        allocator.emptyCache()
        var stats = allocator.statistics
        #expect(stats.reservedBytes == 2 * Self.mib + 6 * Self.mib)
        #expect(stats.deviceFreeCalls == 1)
        #expect(device.liveBytes == stats.reservedBytes)
        allocator.free(a.address)
        allocator.free(c.address)
        allocator.emptyCache()
        stats = allocator.statistics
        #expect(stats.reservedBytes == 0)
        #expect(stats.segmentCount == 0)
        #expect(stats.peakReservedBytes == 12 * Self.mib)
        #expect(device.live.isEmpty)
    }

    /// A graph captured into a pool replays into its blocks: while the pool lives, they must not be
    /// handed to other work, and shared blocks freed during the capture (the graph may read them)
    /// must not be reused either.
    @Test func capturePoolKeepsItsBlocksAndHoldsSharedBlocksFreedDuringTheCapture() throws {
        let device = FakeDeviceMemory(capacity: 1 << 30)
        let allocator = CachingAllocator(backend: device)
        let before = try allocator.allocate(byteCount: 4096)          // shared, read by the capture
        let cachedShared = try allocator.allocate(byteCount: 4096)
        allocator.free(cachedShared.address)                           // a free shared block of the right size

        let pool = allocator.beginCapturePool()
        let inCapture = try allocator.allocate(byteCount: 4096)
        #expect(inCapture.address != cachedShared.address, "a capture must not take a shared block")
        #expect(allocator.isInCapturePool(inCapture.address))
        allocator.free(before.address)                                 // freed during the capture: held
        allocator.free(inCapture.address)                              // back to the capture pool
        let again = try allocator.allocate(byteCount: 4096)
        #expect(again.address == inCapture.address, "the capture reuses its own blocks in stream order")
        allocator.endCapturePool()

        // Outside the capture: neither the pool's blocks nor the held block are handed out.
        var outside: [DeviceAllocation] = []
        for _ in 0..<8 { outside.append(try allocator.allocate(byteCount: 4096)) }
        for block in outside {
            #expect(!allocator.isInCapturePool(block.address))
            #expect(block.address != before.address && block.address != again.address)
        }
        // A capture-pool block freed after the capture stays in the pool.
        allocator.free(again.address)
        let afterFree = try allocator.allocate(byteCount: 4096)
        #expect(afterFree.address != again.address)
        outside.append(afterFree)
        // emptyCache leaves the pool's segments alone, wholly free as they are.
        allocator.emptyCache()
        #expect(allocator.isInCapturePool(again.address))

        // Released: the pool's memory and the held block are shared again.
        allocator.releaseCapturePool(pool)
        var reused = Set<CUdeviceptr>()
        var extra: [DeviceAllocation] = []
        for _ in 0..<1000 {
            let block = try allocator.allocate(byteCount: 4096)
            extra.append(block)
            reused.insert(block.address)
            if reused.contains(before.address) && reused.contains(again.address) { break }
        }
        #expect(reused.contains(before.address), "the held block is cached again once the pool is released")
        #expect(reused.contains(again.address), "the pool's blocks join the shared pool")
        for block in outside + extra { allocator.free(block.address) }
        #expect(allocator.statistics.allocatedBytes == 0)
        allocator.emptyCache()
        #expect(device.live.isEmpty)
    }
}

/// A small deterministic generator for test patterns.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
