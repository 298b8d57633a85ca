import CUDA
@testable import Distributed
import Tensors
import Testing

/// An NCCL group of one rank on GPU 0 (NCCL refuses two ranks on one GPU, so this is what a one-GPU
/// machine can run): every collective, in every dtype, against the direct computation, with fresh GPU
/// allocations poisoned with NaN so an output NCCL did not write fails. Serialized: the tests share
/// GPU 0's compute stream and flip the allocator's poison switch.
@Suite("NCCL process group, one rank", .serialized, .enabled(if: Device.cudaAvailable))
final class NCCLProcessGroupTests {
    let gpu = Device.cuda(0)
    let group: NCCLProcessGroup

    init() throws {
        CUDABackend.poisonAllocations = true
        group = try NCCLProcessGroup(device: .cuda(0), name: "test")
    }

    deinit { CUDABackend.poisonAllocations = false }

    @Test func describesItself() throws {
        #expect(group.rank == 0 && group.size == 1 && group.name == "test" && group.device == gpu)
        #expect(group.communicator.worldSize == 1)
        #expect(group.identity == "group 'test' (rank 0 of 1, cuda:0)")
        #expect(group.communicationStream.handle != group.gpu.stream.handle,
                "collectives must run on their own stream, not the compute stream")
        #expect(ProcessorInfo.environment("NCCL_NVLS_ENABLE") != nil, "loading NCCL sets NCCL_NVLS_ENABLE=0 unless the user set it")
    }

    @Test(arguments: ncclTestDTypes, ReduceOperation.allCases)
    func allReduceInPlace(_ dtype: DType, _ op: ReduceOperation) {
        let values = exactValues(6 * 5, seed: 1)
        let x = tensor(values, shape: [6, 5], dtype: dtype, device: gpu)
        group.allReduce(x, op)
        // One rank: the sum, the average and the maximum over ranks are the rank's own values.
        #expect(maxDifference(x.doubles(), values) == 0, "allReduce \(op) of \(dtype) on one rank changed the values")
    }

    /// The input comes from a GPU op just before the collective and the result feeds a GPU op just after,
    /// while the communication stream is held back: only the event ordering keeps the result right.
    @Test(arguments: [DType.float32, .bfloat16])
    func allReduceIsOrderedWithTheComputeStream(_ dtype: DType) throws {
        let a = tensor(exactValues(4096, seed: 2), shape: [4096], dtype: dtype, device: gpu)
        let b = tensor(exactValues(4096, seed: 3), shape: [4096], dtype: dtype, device: gpu)
        try delay(group.communicationStream, seconds: 0.2)
        let x = a + b
        group.allReduce(x, .sum)
        let y = x * 2.0
        let expected = zip(exactValues(4096, seed: 2), exactValues(4096, seed: 3)).map { 2 * ($0 + $1) }
        #expect(maxDifference(y.doubles(), expected) == 0)
    }

    @Test(arguments: ncclTestDTypes)
    func allReduceAsync(_ dtype: DType) throws {
        let values = exactValues(1000, seed: 4)
        let x = tensor(values, shape: [10, 100], dtype: dtype, device: gpu)
        try delay(group.communicationStream, seconds: 0.1)
        let work = group.allReduceAsync(x, .sum)
        work.wait()
        work.wait()   // a second wait is a no-op
        #expect(maxDifference(x.doubles(), values) == 0)
    }

    /// The gathered output is a fresh (poisoned) tensor: reading it right after the call sees NCCL's
    /// result only if the compute stream waited for the held-back communication stream.
    @Test(arguments: ncclTestDTypes)
    func allGatherWaitsForTheCollective(_ dtype: DType) throws {
        let values = exactValues(3 * 7, seed: 5)
        let x = tensor(values, shape: [3, 7], dtype: dtype, device: gpu)
        try delay(group.communicationStream, seconds: 0.2)
        let gathered = group.allGather(x)
        #expect(gathered.shape == [3, 7] && gathered.dtype == dtype)
        #expect(maxDifference(gathered.doubles(), values) == 0)
    }

    @Test(arguments: ncclTestDTypes)
    func broadcastFromRootZero(_ dtype: DType) {
        let values = exactValues(33, seed: 6)
        let x = tensor(values, shape: [33], dtype: dtype, device: gpu)
        group.broadcast(x, root: 0)
        #expect(maxDifference(x.doubles(), values) == 0)
    }

    @Test(arguments: ncclTestDTypes, ReduceOperation.allCases)
    func reduceScatter(_ dtype: DType, _ op: ReduceOperation) {
        let values = exactValues(8 * 3, seed: 7)
        let x = tensor(values, shape: [8, 3], dtype: dtype, device: gpu)
        let out = group.reduceScatter(x, op)
        #expect(out.shape == [8, 3] && out.dtype == dtype)
        #expect(maxDifference(out.doubles(), values) == 0)
    }

    @Test(arguments: ncclTestDTypes)
    func allToAllToItself(_ dtype: DType) {
        let values = exactValues(5 * 4, seed: 8)
        let rows = tensor(values, shape: [5, 4], dtype: dtype, device: gpu)
        let out = group.allToAll(rows, sendCounts: [5], receiveCounts: [5])
        #expect(out.shape == [5, 4] && out.dtype == dtype)
        #expect(maxDifference(out.doubles(), values) == 0)
        let none = group.allToAll(Tensor.empty([0, 4], dtype: dtype, device: gpu), sendCounts: [0], receiveCounts: [0])
        #expect(none.shape == [0, 4])
    }

    /// A tensor whose last reference goes away right after the collective must not be reused before the
    /// (held-back) collective has read it: the next allocations of the same size, filled at once, would
    /// otherwise overwrite what NCCL is about to send.
    @Test func inputFreedAfterTheCallIsNotReusedTooEarly() throws {
        let values = exactValues(1 << 16, seed: 9)
        try delay(group.communicationStream, seconds: 0.3)
        let gathered: Tensor = {
            let input = tensor(values, shape: [1 << 16], dtype: .float32, device: gpu)
            return group.allGather(input)
        }()
        let overwrites = (0..<4).map { _ in Tensor.full([1 << 16], 99, device: gpu) }
        #expect(maxDifference(gathered.doubles(), values) == 0)
        #expect(overwrites.allSatisfy { $0.doubles().allSatisfy { $0 == 99 } })
    }

    @Test func barrierReturns() {
        let clock = ContinuousClock()
        let elapsed = clock.measure { group.barrier() }
        #expect(elapsed < .seconds(30))
    }

    @Test func emptyTensorsMoveNothing() {
        let x = Tensor.empty([0, 3], dtype: .float32, device: gpu)
        group.allReduce(x, .sum)
        group.allReduceAsync(x, .max).wait()
        group.broadcast(x, root: 0)
        #expect(group.allGather(x).shape == [0, 3])
        #expect(group.reduceScatter(x, .sum).shape == [0, 3])
    }

    /// A group of one split by any color is a group of one, with its own stream.
    @Test func splitGivesAWorkingGroup() throws {
        guard try NCCL.shared().supportsSplit else { return }   // NCCL < 2.18: split stops with a message instead
        let child = group.split(color: 3, key: 0)
        #expect(child.size == 1 && child.rank == 0 && child.name == "test/3" && child.device == gpu)
        let values = exactValues(10, seed: 10)
        let x = tensor(values, shape: [10], dtype: .float32, device: gpu)
        child.allReduce(x, .sum)
        #expect(maxDifference(x.doubles(), values) == 0)
    }

    /// A collective that cannot finish (its stream is blocked for good) with a 1-second timeout: the
    /// watchdog prints the op, the group, the rank and NCCL_DEBUG, and exits with status 1.
    ///
    /// The tensor is made and one collective run before the stream is blocked: CUDA loads a module's
    /// kernels lazily, and a load waits for the context's streams, so a first kernel launched after
    /// the block would hang in the load itself, before any collective is enqueued for the watchdog to
    /// time (which is how this test hung on the H200 until 2026-12-01).
    @Test func watchdogStopsAStuckCollective() async {
        let result = await #expect(processExitsWith: .exitCode(1), observing: [\.standardErrorContent]) {
            let group = try NCCLProcessGroup(device: .cuda(0), name: "stuck", timeout: .seconds(1))
            let x = Tensor.ones([16], device: .cuda(0))
            group.allReduce(x, .sum)
            _ = x.doubles()
            try blockForever(group.communicationStream)
            group.allReduce(x, .sum)
            _ = x.doubles()   // waits on the compute stream, which waits on the collective: only the watchdog ends this
        }
        let stderr = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(stderr.contains("allReduce([16] float32, sum)"), "message: \(stderr)")
        #expect(stderr.contains("group 'stuck' (rank 0 of 1, cuda:0)"), "message: \(stderr)")
        #expect(stderr.contains("NCCL_DEBUG=INFO") && stderr.contains("FASTMOE_NCCL_TIMEOUT"), "message: \(stderr)")
    }
}

/// Environment access for the tests (no Foundation).
enum ProcessorInfo {
    static func environment(_ name: String) -> String? { LibraryLoader.processEnvironment(name) }
}
