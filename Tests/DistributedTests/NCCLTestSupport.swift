import CUDA
@testable import Distributed
import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// The dtypes an NCCL group moves.
let ncclTestDTypes: [DType] = [.float32, .bfloat16, .int32]

/// Small integers (-8...8) that float32, bfloat16 and int32 all hold exactly, so sums of a few ranks
/// compare exactly. `seed` separates ranks and tensors.
func exactValues(_ count: Int, seed: Int) -> [Double] {
    (0..<count).map { Double((($0 &* 7) &+ seed &* 13) % 17 - 8) }
}

/// A tensor of `values` in `dtype` on `device`.
func tensor(_ values: [Double], shape: [Int], dtype: DType, device: Device) -> Tensor {
    if dtype == .int32 { return Tensor(values.map { Int32($0) }, shape: shape, device: device) }
    return Tensor(values, shape: shape, dtype: dtype, device: device)
}

/// The largest |a - b|, or infinity when the lengths differ or a value is NaN (an unwritten, poisoned element).
func maxDifference(_ a: [Double], _ b: [Double]) -> Double {
    guard a.count == b.count else { return .infinity }
    return zip(a, b).map { $0.isNaN || $1.isNaN ? .infinity : Swift.abs($0 - $1) }.max() ?? 0
}

/// Rounds to bfloat16 (round to nearest even), as a GPU holding a bfloat16 result does.
func roundedToBFloat16(_ value: Double) -> Double {
    Double(BFloat16Bits.toFloat(BFloat16Bits.fromFloat(Float(value))))
}

/// Blocks `stream` for `seconds` with a host function (`cuLaunchHostFunc`), so that work enqueued on it
/// afterwards runs late: the ordering tests use it to make a race between streams visible, and the
/// watchdog test to make a collective never finish in time.
func delay(_ stream: CUDAStream, seconds: Double) throws {
    typealias HostFunction = @convention(c) (UnsafeMutableRawPointer?) -> Void
    typealias LaunchHostFunc = @convention(c) (OpaquePointer?, HostFunction?, UnsafeMutableRawPointer?) -> CUresult
    let driver = try Driver.shared()
    let launchHostFunc: LaunchHostFunc = try driver.library.symbol("cuLaunchHostFunc")
    let microseconds = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)   // freed by the host function
    microseconds.pointee = UInt32(seconds * 1e6)
    let device = try CUDA.device(stream.deviceIndex)
    device.makeCurrent()
    let result = launchHostFunc(stream.handle, { raw in
        let pointer = raw!.assumingMemoryBound(to: UInt32.self)
        usleep(pointer.pointee)
        pointer.deallocate()
    }, UnsafeMutableRawPointer(microseconds))
    try driver.check(result, "cuLaunchHostFunc")
}

/// Blocks `stream` until the process ends: the stream waits for a device word to become 1
/// (`cuStreamWaitValue32`), and nothing ever writes it. Unlike a sleeping host function, it leaves
/// the driver free to answer event queries, as a collective stuck on a peer that never arrives does.
func blockForever(_ stream: CUDAStream) throws {
    typealias WaitValue = @convention(c) (OpaquePointer?, CUdeviceptr, UInt32, UInt32) -> CUresult
    let driver = try Driver.shared()
    let wait: WaitValue
    do { wait = try driver.library.symbol("cuStreamWaitValue32_v2") } catch { wait = try driver.library.symbol("cuStreamWaitValue32") }
    let word = Tensor.zeros([1], dtype: .int32, device: .cuda(stream.deviceIndex))
    let device = try CUDA.device(stream.deviceIndex)
    device.makeCurrent()
    // CU_STREAM_WAIT_VALUE_GEQ (0): wait until the word is at least 1. The word is leaked on purpose.
    try driver.check(wait(stream.handle, CUdeviceptr(word.address), 1, 0), "cuStreamWaitValue32")
    _ = Unmanaged.passRetained(word)
}

/// Runs `body(rank)` on `count` threads at once (NCCL's init blocks until every rank has joined, so the
/// ranks must run concurrently) and returns the results in rank order. Assertions belong on the test's
/// thread, so ranks return what they saw.
func onThreads<T>(_ count: Int, _ body: @escaping @Sendable (Int) -> T) -> [T] {
    let results = ResultSlots<T>(count: count)
    var threads: [pthread_t] = []
    for rank in 0..<count {
        let work = ThreadWork { results.set(rank, body(rank)) }
        var thread = pthread_t()
        let created = pthread_create(&thread, nil, { raw in
            Unmanaged<ThreadWork>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, Unmanaged.passRetained(work).toOpaque())
        precondition(created == 0, "pthread_create failed: \(created)")
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
    return results.values()
}

/// A closure handed to a new thread.
final class ThreadWork: @unchecked Sendable {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// One result per thread, written by that thread only and read after every thread joined.
final class ResultSlots<T>: @unchecked Sendable {
    private let slots: UnsafeMutableBufferPointer<T?>
    init(count: Int) {
        slots = .allocate(capacity: count)
        slots.initialize(repeating: nil)
    }
    deinit {
        slots.deinitialize()
        slots.deallocate()
    }
    func set(_ index: Int, _ value: T) { slots[index] = value }
    func values() -> [T] { slots.map { $0! } }
}
