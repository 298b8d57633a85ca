import Testing
@testable import CUDA
#if canImport(Glibc)
import Glibc
#endif

/// Tests that need an NVIDIA GPU. Serialized: they share each device's stream and cuBLAS handle.
@Suite("CUDA on a GPU", .serialized, .enabled(if: CUDA.isAvailable))
struct GPUTests {
    static let affineSource = """
        extern "C" __global__ void affine(const float* x, float* y, int n) {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) y[i] = 2.0f * x[i] + 1.0f;
        }
        """

    func temporaryDirectory() -> String {
        var template = Array("/tmp/fastmoe-gpu-test-XXXXXX".utf8CString)
        let path = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        return String(cString: path!)
    }

    func randomFloats(_ count: Int, seed: UInt64) -> [Float] {
        var generator = SplitMix64(seed: seed)
        return (0..<count).map { _ in Float(Double(generator.next() >> 11) / Double(1 << 53) * 2 - 1) }
    }

    @Test func deviceDescribesItself() throws {
        let gpu = try CUDA.device(0)
        #expect(!gpu.name.isEmpty)
        #expect(gpu.computeCapability.major >= 5)
        #expect(gpu.multiprocessorCount > 0)
        #expect(gpu.totalMemory > 1 << 30)
        let info = gpu.memoryInfo()
        #expect(info.total == gpu.totalMemory)
        #expect(info.free > 0 && info.free <= info.total)
        #expect(try CUDA.device(0) === gpu)
        #expect(throws: CUDAError.deviceIndexOutOfRange(index: CUDA.deviceCount, count: CUDA.deviceCount)) {
            try CUDA.device(CUDA.deviceCount)
        }
    }

    @Test func compiledKernelComputesAffineMap() throws {
        let gpu = try CUDA.device(0)
        let cacheDirectory = temporaryDirectory()
        defer {
            for entry in LibraryLoader.listDirectory(cacheDirectory) { unlink(cacheDirectory + "/" + entry) }
            rmdir(cacheDirectory)
        }
        let compiler = try KernelCompiler(device: gpu, cacheDirectory: cacheDirectory)
        let module = try compiler.module(source: Self.affineSource, name: "affine_test")
        #expect(try compiler.module(source: Self.affineSource, name: "affine_test") === module)
        #expect(LibraryLoader.listDirectory(cacheDirectory).count == 1, "the compiled module is cached on disk")
        let function = try module.function("affine")
        #expect(try module.function("affine") === function)
        #expect(throws: CUDAError.functionNotFound(function: "missing", module: "affine_test")) {
            try module.function("missing")
        }

        let n = 10_000
        let input = randomFloats(n, seed: 11)
        let x = try gpu.allocator.allocate(byteCount: n * 4)
        let y = try gpu.allocator.allocate(byteCount: n * 4)
        defer {
            gpu.allocator.free(x.address)
            gpu.allocator.free(y.address)
        }
        gpu.stream.upload(input, to: x.address)
        gpu.stream.memsetD32(y.address, value: 0x7FC0_0000, count: n)
        launch(function, grid: ((n + 255) / 256, 1, 1), block: (256, 1, 1), stream: gpu.stream,
               arguments: [.pointer(x.address), .pointer(y.address), .int32(Int32(n))])
        let output = gpu.stream.download(y.address, count: n, as: Float.self)
        var mismatches = 0
        for i in 0..<n where output[i] != 2 * input[i] + 1 { mismatches += 1 }
        #expect(mismatches == 0)

        // A second compiler with the same cache directory loads the module from disk and computes the same.
        let reloaded = try KernelCompiler(device: gpu, cacheDirectory: cacheDirectory)
            .module(source: Self.affineSource, name: "affine_test").function("affine")
        gpu.stream.memsetD32(y.address, value: 0x7FC0_0000, count: n)
        launch(reloaded, grid: ((n + 255) / 256, 1, 1), block: (256, 1, 1), stream: gpu.stream,
               .pointer(x.address), .pointer(y.address), .int32(Int32(n)))
        #expect(gpu.stream.download(y.address, count: n, as: Float.self) == output)
    }

    @Test func syntaxErrorThrowsCompileFailedWithTheLog() throws {
        let gpu = try CUDA.device(0)
        let compiler = try KernelCompiler(device: gpu, cacheDirectory: nil)
        let broken = "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_name_42 + ; }"
        do {
            _ = try compiler.module(source: broken, name: "broken_module")
            Issue.record("a kernel with a syntax error compiled")
        } catch let CUDAError.compileFailed(name, log) {
            #expect(name == "broken_module")
            #expect(log.contains("undefined_name_42"))
            #expect(log.contains("error"))
            #expect(CUDAError.compileFailed(name: name, log: log).description.contains(log))
        }
    }

    /// Row-major reference: C = alpha op(A) op(B) + beta C, in double.
    func referenceGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double, a: [Float], b: [Float],
                       beta: Double, c: [Float]) -> [Double] {
        var result = [Double](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var sum = 0.0
                for p in 0..<k {
                    let av = transA ? a[p * m + i] : a[i * k + p]
                    let bv = transB ? b[j * k + p] : b[p * n + j]
                    sum += Double(av) * Double(bv)
                }
                result[i * n + j] = alpha * sum + beta * Double(c[i * n + j])
            }
        }
        return result
    }

    func maxRelativeError(_ actual: [Float], _ expected: [Double]) -> Double {
        let scale = max(expected.map { abs($0) }.max() ?? 0, 1e-30)
        return zip(actual, expected).map { abs(Double($0) - $1) }.max()! / scale
    }

    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func float32GemmMatchesLoop(transA: Bool, transB: Bool) throws {
        let gpu = try CUDA.device(0)
        let blas = try gpu.blas()
        let (m, n, k) = (64, 48, 32)
        let a = randomFloats(m * k, seed: 1), b = randomFloats(k * n, seed: 2), c0 = randomFloats(m * n, seed: 3)
        let dA = try gpu.allocator.allocate(byteCount: a.count * 4)
        let dB = try gpu.allocator.allocate(byteCount: b.count * 4)
        let dC = try gpu.allocator.allocate(byteCount: c0.count * 4)
        defer { [dA, dB, dC].forEach { gpu.allocator.free($0.address) } }
        gpu.stream.upload(a, to: dA.address)
        gpu.stream.upload(b, to: dB.address)
        gpu.stream.upload(c0, to: dC.address)
        blas.rowMajorGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 1.5,
                          a: dA.address, lda: transA ? m : k, b: dB.address, ldb: transB ? k : n,
                          beta: 0.5, c: dC.address, ldc: n)
        let result = gpu.stream.download(dC.address, count: m * n, as: Float.self)
        let expected = referenceGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 1.5, a: a, b: b,
                                     beta: 0.5, c: c0)
        #expect(maxRelativeError(result, expected) <= 1e-4)
    }

    @Test func stridedBatchedGemmMatchesLoop() throws {
        let gpu = try CUDA.device(0)
        let blas = try gpu.blas()
        let (m, n, k, batch) = (16, 24, 8, 3)
        let a = randomFloats(batch * m * k, seed: 4), b = randomFloats(batch * k * n, seed: 5)
        let dA = try gpu.allocator.allocate(byteCount: a.count * 4)
        let dB = try gpu.allocator.allocate(byteCount: b.count * 4)
        let dC = try gpu.allocator.allocate(byteCount: batch * m * n * 4)
        defer { [dA, dB, dC].forEach { gpu.allocator.free($0.address) } }
        gpu.stream.upload(a, to: dA.address)
        gpu.stream.upload(b, to: dB.address)
        blas.rowMajorGemm(m: m, n: n, k: k, a: dA.address, lda: k, b: dB.address, ldb: n, c: dC.address, ldc: n,
                          batch: batch, strides: GemmStrides(a: m * k, b: k * n, c: m * n))
        let result = gpu.stream.download(dC.address, count: batch * m * n, as: Float.self)
        for index in 0..<batch {
            let expected = referenceGemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 1,
                                         a: Array(a[(index * m * k)..<((index + 1) * m * k)]),
                                         b: Array(b[(index * k * n)..<((index + 1) * k * n)]),
                                         beta: 0, c: [Float](repeating: 0, count: m * n))
            #expect(maxRelativeError(Array(result[(index * m * n)..<((index + 1) * m * n)]), expected) <= 1e-4)
        }
    }

    static func toBFloat16(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
    }

    static func fromBFloat16(_ value: UInt16) -> Float {
        Float(bitPattern: UInt32(value) << 16)
    }

    @Test func bfloat16GemmMatchesLoop() throws {
        let gpu = try CUDA.device(0)
        let blas = try gpu.blas()
        let (m, n, k) = (64, 48, 32)
        let a16 = randomFloats(m * k, seed: 6).map(Self.toBFloat16)
        let b16 = randomFloats(k * n, seed: 7).map(Self.toBFloat16)
        let dA = try gpu.allocator.allocate(byteCount: a16.count * 2)
        let dB = try gpu.allocator.allocate(byteCount: b16.count * 2)
        let dC = try gpu.allocator.allocate(byteCount: m * n * 2)
        defer { [dA, dB, dC].forEach { gpu.allocator.free($0.address) } }
        gpu.stream.upload(a16, to: dA.address)
        gpu.stream.upload(b16, to: dB.address)
        blas.rowMajorGemm(transA: false, transB: true, m: m, n: n, k: k, a: dA.address, lda: k,
                          b: dB.address, ldb: k, c: dC.address, ldc: n, dtypes: .bfloat16)
        let result = gpu.stream.download(dC.address, count: m * n, as: UInt16.self).map(Self.fromBFloat16)
        // b16 holds n×k values; read as the transposed operand.
        let expected = referenceGemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1,
                                     a: a16.map(Self.fromBFloat16), b: b16.map(Self.fromBFloat16),
                                     beta: 0, c: [Float](repeating: 0, count: m * n))
        #expect(maxRelativeError(result, expected) <= 1e-2)
    }

    @Test func groupedGemmMatchesLoopWhenAvailable() throws {
        let gpu = try CUDA.device(0)
        let blas = try gpu.blas()
        guard blas.supportsGroupedGemm else { return }
        // Three "experts" with different row counts, all [rows, 32] x [32, 16].
        let rows = [5, 17, 9]
        let (k, n) = (32, 16)
        var allocations: [DeviceAllocation] = []
        defer { allocations.forEach { gpu.allocator.free($0.address) } }
        var aPointers: [UInt64] = [], bPointers: [UInt64] = [], cPointers: [UInt64] = []
        var inputs: [([Float], [Float])] = []
        for (index, m) in rows.enumerated() {
            let a = randomFloats(m * k, seed: 20 + UInt64(index)), b = randomFloats(k * n, seed: 30 + UInt64(index))
            let dA = try gpu.allocator.allocate(byteCount: a.count * 4)
            let dB = try gpu.allocator.allocate(byteCount: b.count * 4)
            let dC = try gpu.allocator.allocate(byteCount: m * n * 4)
            allocations += [dA, dB, dC]
            gpu.stream.upload(a, to: dA.address)
            gpu.stream.upload(b, to: dB.address)
            aPointers.append(dA.address); bPointers.append(dB.address); cPointers.append(dC.address)
            inputs.append((a, b))
        }
        let pointerArrays = try (0..<3).map { _ in try gpu.allocator.allocate(byteCount: rows.count * 8) }
        allocations += pointerArrays
        gpu.stream.upload(aPointers, to: pointerArrays[0].address)
        gpu.stream.upload(bPointers, to: pointerArrays[1].address)
        gpu.stream.upload(cPointers, to: pointerArrays[2].address)
        let groups = rows.count
        try blas.rowMajorGroupedGemm(
            transA: Array(repeating: false, count: groups), transB: Array(repeating: false, count: groups),
            m: rows.map(Int32.init), n: Array(repeating: Int32(n), count: groups), k: Array(repeating: Int32(k), count: groups),
            alpha: Array(repeating: 1, count: groups), aPointers: pointerArrays[0].address, lda: Array(repeating: Int32(k), count: groups),
            bPointers: pointerArrays[1].address, ldb: Array(repeating: Int32(n), count: groups),
            beta: Array(repeating: 0, count: groups), cPointers: pointerArrays[2].address,
            ldc: Array(repeating: Int32(n), count: groups), groupSizes: Array(repeating: 1, count: groups), dtypes: .float32)
        for (index, m) in rows.enumerated() {
            let result = gpu.stream.download(cPointers[index], count: m * n, as: Float.self)
            let expected = referenceGemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 1,
                                         a: inputs[index].0, b: inputs[index].1, beta: 0,
                                         c: [Float](repeating: 0, count: m * n))
            #expect(maxRelativeError(result, expected) <= 1e-4)
        }
    }

    @Test func allocatorOnTheDeviceStopsGrowingAndCountsExactly() throws {
        let gpu = try CUDA.device(0)
        let allocator = CachingAllocator(backend: DriverMemoryBackend(device: gpu), deviceIndex: gpu.index)
        let sizes = [4096, 1 << 20, 3 << 20, 100, 7 << 20, 65_536, 12_345]
        var reservedAfterFirst = 0
        var callsAfterFirst = 0
        for iteration in 0..<1000 {
            let blocks = try sizes.map { try allocator.allocate(byteCount: $0) }
            // Touch the memory so that a wrong address would fault.
            for block in blocks { gpu.stream.memsetD8(block.address, value: UInt8(iteration & 0xFF), count: block.byteCount) }
            let stats = allocator.statistics
            #expect(stats.allocatedBytes == blocks.map(\.blockSize).reduce(0, +))
            #expect(stats.allocationCount == sizes.count)
            for block in blocks.reversed() { allocator.free(block.address) }
            if iteration == 0 {
                reservedAfterFirst = stats.reservedBytes
                callsAfterFirst = stats.deviceAllocationCalls
            } else {
                #expect(stats.reservedBytes == reservedAfterFirst)
                #expect(stats.deviceAllocationCalls == callsAfterFirst)
            }
        }
        gpu.stream.synchronize()
        #expect(allocator.statistics.allocatedBytes == 0)
        allocator.emptyCache()
        #expect(allocator.statistics.reservedBytes == 0)
    }

    @Test func eventsTimeGPUWork() throws {
        let gpu = try CUDA.device(0)
        let start = try CUDAEvent(device: gpu)
        let stop = try CUDAEvent(device: gpu)
        let bytes = 256 << 20
        let buffer = try gpu.allocator.allocate(byteCount: bytes)
        defer { gpu.allocator.free(buffer.address) }
        start.record(on: gpu.stream)
        for value in 0..<4 { gpu.stream.memsetD8(buffer.address, value: UInt8(value), count: bytes) }
        stop.record(on: gpu.stream)
        let milliseconds = stop.elapsedMilliseconds(since: start)
        #expect(milliseconds > 0)
        #expect(milliseconds < 10_000)
    }

    @Test func pinnedBufferReceivesCounts() throws {
        let gpu = try CUDA.device(0)
        let pinned = try PinnedHostBuffer(device: gpu, byteCount: 64)
        let counts = try gpu.allocator.allocate(byteCount: 64)
        defer { gpu.allocator.free(counts.address) }
        gpu.stream.memsetD32(counts.address, value: 12345, count: 16)
        gpu.stream.copyDeviceToHost(counts.address, to: pinned.baseAddress, byteCount: 64)
        gpu.stream.synchronize()
        let values = pinned.withUnsafeMutableBufferPointer(as: UInt32.self, count: 16) { Array($0) }
        #expect(values == Array(repeating: 12345, count: 16))
    }

    @Test(.enabled(if: (try? NCCL.shared()) != nil))
    func singleRankNCCLAllReduceAndBroadcast() throws {
        let gpu = try CUDA.device(0)
        let nccl = try NCCL.shared()
        let communicator = try NCCLCommunicator(uniqueId: try nccl.uniqueId(), rank: 0, worldSize: 1, device: gpu)
        #expect(communicator.rank == 0 && communicator.worldSize == 1)
        let values: [Float] = [1, -2, 3.5, 4]
        let send = try gpu.allocator.allocate(byteCount: 16)
        let receive = try gpu.allocator.allocate(byteCount: 16)
        defer { [send, receive].forEach { gpu.allocator.free($0.address) } }
        gpu.stream.upload(values, to: send.address)
        gpu.stream.memsetD32(receive.address, value: 0x7FC0_0000, count: 4)
        try communicator.allReduce(send: send.address, receive: receive.address, count: 4, dataType: .float32,
                                   op: .sum, stream: gpu.stream)
        #expect(gpu.stream.download(receive.address, count: 4, as: Float.self) == values)
        gpu.stream.memsetD32(receive.address, value: 0x7FC0_0000, count: 4)
        try nccl.group {
            try communicator.broadcast(send: send.address, receive: receive.address, count: 4, dataType: .float32,
                                       root: 0, stream: gpu.stream)
        }
        #expect(gpu.stream.download(receive.address, count: 4, as: Float.self) == values)
    }
}
