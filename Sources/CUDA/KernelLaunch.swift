import Synchronization

/// A count since the process started, bumped and read from any thread.
public final class ProcessCounter: Sendable {
    private let value = Atomic<Int>(0)
    public var total: Int { value.load(ordering: .relaxed) }
    func add() { value.wrappingAdd(1, ordering: .relaxed) }
}

/// What `fastmoe bench train` reports per step about the GPU's queue.
public enum DeviceCounters {
    /// Work enqueued: our kernel launches and the GEMM calls of cuBLAS and cuBLASLt (one or two
    /// kernels each). On steps of small tensors the GPU's fixed cost per kernel, not the
    /// arithmetic, sets the pace.
    public static let launches = ProcessCounter()
    /// Times the host waited for a device (a stream, an event or the whole device synchronised;
    /// every read-back ends in one): each drains the device's queue.
    public static let hostWaits = ProcessCounter()
}

/// One kernel parameter, passed by value as the kernel declares it.
///
/// Device pointers are `.pointer` (a `T*` parameter); `int`, `unsigned`, `long long`, `float`, `double`
/// map to the other cases. The case must match the kernel's parameter type exactly: the driver copies
/// as many bytes as the parameter has.
public enum KernelArgument: Sendable, Equatable {
    case pointer(CUdeviceptr)
    case int32(Int32)
    case uint32(UInt32)
    case int64(Int64)
    case float(Float)
    case double(Double)
    /// A `const __grid_constant__ CUtensorMap` parameter (128 bytes, 64-byte aligned).
    case tensorMap(TensorMap)

    /// Bytes the parameter takes.
    var size: Int {
        if case .tensorMap = self { return 128 }
        return 8
    }

    /// Where each parameter goes in the launch's buffer, each aligned to its size (at most 64: a
    /// tensor map's alignment), and the buffer's size.
    static func slots(_ arguments: [KernelArgument]) -> (offsets: [Int], bytes: Int) {
        var offsets: [Int] = [], end = 0
        for argument in arguments {
            let alignment = min(argument.size, 64)
            end = (end + alignment - 1) / alignment * alignment
            offsets.append(end)
            end += argument.size
        }
        return (offsets, end)
    }
}

/// Enqueues `function` on `stream` with a `grid` of blocks of `block` threads.
///
/// The parameters are written into slots of a temporary buffer that lives for the call
/// (`cuLaunchKernel` copies them before returning), each aligned to its size (8 bytes; a tensor map's
/// 128 to 64), with an array of pointers to the slots.
/// A launch the driver rejects (bad configuration, too much shared memory) stops the program with the
/// kernel's name and the CUDA error. In debug builds (`-DDEBUG`, SwiftPM's default for `swift build`)
/// every launch is followed by a stream synchronization, so a fault inside the kernel is reported here,
/// against the kernel that caused it; release builds do not wait.
///
/// - Parameters:
///   - sharedMemory: bytes of dynamic shared memory per block (above 48 KiB, call
///     ``CUDAFunction/setMaxDynamicSharedMemory(_:)`` once first).
public func launch(
    _ function: CUDAFunction,
    grid: (x: Int, y: Int, z: Int),
    block: (x: Int, y: Int, z: Int),
    sharedMemory: Int = 0,
    stream: CUDAStream,
    arguments: [KernelArgument]
) {
    guarantee(grid.x > 0 && grid.y > 0 && grid.z > 0 && grid.x <= Int(UInt32.max) && grid.y <= 65535 && grid.z <= 65535,
                 "launch \(function.name): grid \(grid) must be positive, with y and z at most 65535")
    guarantee(block.x > 0 && block.y > 0 && block.z > 0 && block.x * block.y * block.z <= 1024,
                 "launch \(function.name): block \(block) must be positive with at most 1024 threads")
    guarantee(sharedMemory >= 0, "launch \(function.name): negative shared memory \(sharedMemory)")

    let driver = stream.driver
    let count = arguments.count
    stream.makeContextCurrent()
    let (offsets, end) = KernelArgument.slots(arguments)
    let result = withUnsafeTemporaryAllocation(byteCount: max(end, 8), alignment: 64) { slots -> CUresult in
        withUnsafeTemporaryAllocation(of: UnsafeMutableRawPointer?.self, capacity: max(count, 1)) { pointers -> CUresult in
            let base = slots.baseAddress!
            for (index, argument) in arguments.enumerated() {
                let slot = base + offsets[index]
                switch argument {
                case .pointer(let value): slot.storeBytes(of: value, as: UInt64.self)
                case .int32(let value): slot.storeBytes(of: value, as: Int32.self)
                case .uint32(let value): slot.storeBytes(of: value, as: UInt32.self)
                case .int64(let value): slot.storeBytes(of: value, as: Int64.self)
                case .float(let value): slot.storeBytes(of: value, as: Float.self)
                case .double(let value): slot.storeBytes(of: value, as: Double.self)
                case .tensorMap(let map):
                    for (word, value) in map.words.enumerated() { slot.storeBytes(of: value, toByteOffset: 8 * word, as: UInt64.self) }
                }
                pointers[index] = slot
            }
            return driver.cuLaunchKernel(
                function.handle, UInt32(grid.x), UInt32(grid.y), UInt32(grid.z),
                UInt32(block.x), UInt32(block.y), UInt32(block.z), UInt32(sharedMemory),
                stream.handle, count == 0 ? nil : pointers.baseAddress, nil)
        }
    }
    driver.require(result, "cuLaunchKernel(\(function.name), grid \(grid), block \(block), shared \(sharedMemory))")
    DeviceCounters.launches.add()
    #if DEBUG
    driver.require(driver.cuStreamSynchronize(stream.handle),
                   "cuStreamSynchronize after kernel \(function.name) (debug build: every launch is checked)")
    #endif
}

/// Variadic form of ``launch(_:grid:block:sharedMemory:stream:arguments:)``.
public func launch(
    _ function: CUDAFunction,
    grid: (x: Int, y: Int, z: Int),
    block: (x: Int, y: Int, z: Int),
    sharedMemory: Int = 0,
    stream: CUDAStream,
    _ arguments: KernelArgument...
) {
    launch(function, grid: grid, block: block, sharedMemory: sharedMemory, stream: stream, arguments: arguments)
}
