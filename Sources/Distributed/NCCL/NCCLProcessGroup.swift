import CUDA
import Tensors

/// A ``ProcessGroup`` of GPU ranks over NCCL: one process (or thread) per GPU, CUDA tensors in
/// float32, bfloat16 and int32.
///
/// Collectives are enqueued on the group's own communication stream and ordered against the device's
/// compute stream (the one every tensor op uses) by events: an event recorded on the compute stream is
/// waited on by the communication stream before the collective, and the compute stream waits on an
/// event recorded after it. So the host never waits (except in ``barrier()``), work before and after a
/// collective is ordered with it, and ``allReduceAsync(_:_:)`` overlaps with compute until ``CollectiveWork/wait()``.
/// A watchdog thread aborts the communicator and exits the process when a collective does not finish
/// within `FASTMOE_NCCL_TIMEOUT` seconds (default 600), or NCCL reports an asynchronous error.
///
/// Ranks find each other through a unique id that rank 0 creates (``makeUniqueId()``) and hands to
/// the others (the rendezvous store does that); a group of one makes its own.
///
/// ```swift
/// let id = rank == 0 ? try NCCLProcessGroup.makeUniqueId() : idFromRankZero
/// let world = try NCCLProcessGroup(rank: rank, size: 8, uniqueId: id, device: .cuda(localRank))
/// world.allReduce(gradient, .average)
/// let single = try NCCLProcessGroup(device: .cuda(0))   // W = 1
/// ```
public final class NCCLProcessGroup: ProcessGroup, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    public let name: String
    public let device: Device
    /// The NCCL communicator, for code that calls NCCL directly.
    public let communicator: NCCLCommunicator
    /// How long a collective may run before the watchdog stops the process.
    public let timeout: Duration
    let gpu: CUDADevice
    /// Where this group's collectives run; each group has its own, so collectives of different groups
    /// (data-parallel and expert-parallel) can overlap.
    let communicationStream: CUDAStream

    /// A fresh NCCL unique id: rank 0 makes it and hands its ``NCCLUniqueId/bytes`` to every other rank.
    public static func makeUniqueId() throws -> NCCLUniqueId {
        try NCCL.shared().uniqueId()
    }

    /// Joins the NCCL communicator named by `uniqueId` as `rank` of `size`, on `device` (blocks until
    /// every rank has joined).
    /// - Parameters:
    ///   - timeout: how long a collective may run; nil reads `FASTMOE_NCCL_TIMEOUT` (default 600 s).
    /// - Throws: when `device` is not a GPU, the rank is out of range, `FASTMOE_NCCL_TIMEOUT` is not a
    ///   number, or NCCL fails (library missing, a peer unreachable, two ranks on one GPU).
    public convenience init(rank: Int, size: Int, uniqueId: NCCLUniqueId, device: Device, name: String = "world",
                            timeout: Duration? = nil) throws {
        guard case .cuda(let index) = device else {
            throw CUDAError.invalidArgument("an NCCL process group moves GPU tensors, but its device is \(device); "
                + "use the MPI or thread process group for CPU tensors (fastmoe launch --backend mpi)")
        }
        guard size >= 1, (0..<size).contains(rank) else {
            throw CUDAError.invalidArgument("NCCL group '\(name)': rank \(rank) is outside 0..<\(size); "
                + "check RANK and WORLD_SIZE in the environment")
        }
        let timeout = try timeout ?? NCCLTimeout.fromEnvironment()
        let gpu = try CUDA.device(index)
        let communicator = try NCCLCommunicator(uniqueId: uniqueId, rank: rank, worldSize: size, device: gpu)
        try self.init(communicator: communicator, gpu: gpu, device: device, name: name, timeout: timeout)
    }

    /// A group of one rank on `device` (it makes its own unique id): every collective runs, as an identity.
    public convenience init(device: Device, name: String = "world", timeout: Duration? = nil) throws {
        try self.init(rank: 0, size: 1, uniqueId: NCCLProcessGroup.makeUniqueId(), device: device, name: name,
                      timeout: timeout)
    }

    private init(communicator: NCCLCommunicator, gpu: CUDADevice, device: Device, name: String, timeout: Duration) throws {
        self.communicator = communicator
        self.gpu = gpu
        self.device = device
        self.name = name
        self.timeout = timeout
        rank = communicator.rank
        size = communicator.worldSize
        communicationStream = try CUDAStream(device: gpu)
        NCCLWatchdog.shared.register(self)
    }

    deinit {
        NCCLWatchdog.shared.unregister(self)
    }

    /// "group 'world' (rank 3 of 8, cuda:3)", for messages.
    var identity: String { "group '\(name)' (rank \(rank) of \(size), \(device))" }

    // MARK: Collectives

    public func allReduce(_ tensor: Tensor, _ op: ReduceOperation) {
        let operation = "allReduce(\(describe(tensor)), \(op))"
        let type = check(tensor, operation)
        guard tensor.count > 0 else { return }
        let end = enqueue(operation) { stream in
            try communicator.allReduce(send: pointer(tensor), receive: pointer(tensor), count: tensor.count,
                                       dataType: type, op: Self.ncclOp(op), stream: stream)
        }
        finish(end, keepAlive: [tensor])
    }

    public func allReduceAsync(_ tensor: Tensor, _ op: ReduceOperation) -> any CollectiveWork {
        let operation = "allReduceAsync(\(describe(tensor)), \(op))"
        let type = check(tensor, operation)
        guard tensor.count > 0 else { return NCCLWork(end: nil, compute: gpu.stream, keepAlive: []) }
        let end = enqueue(operation) { stream in
            try communicator.allReduce(send: pointer(tensor), receive: pointer(tensor), count: tensor.count,
                                       dataType: type, op: Self.ncclOp(op), stream: stream)
        }
        return NCCLWork(end: end, compute: gpu.stream, keepAlive: [tensor])
    }

    public func broadcast(_ tensor: Tensor, root: Int) {
        let operation = "broadcast(\(describe(tensor)), root \(root))"
        let type = check(tensor, operation)
        guarantee((0..<size).contains(root), "\(operation): root \(root) is outside 0..<\(size) of \(identity)")
        guard tensor.count > 0 else { return }
        let end = enqueue(operation) { stream in
            try communicator.broadcast(send: pointer(tensor), receive: pointer(tensor), count: tensor.count,
                                       dataType: type, root: root, stream: stream)
        }
        finish(end, keepAlive: [tensor])
    }

    public func allGather(_ tensor: Tensor) -> Tensor {
        let operation = "allGather(\(describe(tensor)))"
        let type = check(tensor, operation)
        guarantee(tensor.rank >= 1, "\(operation): needs a tensor of rank 1 or more ([n, ...]), got shape \(tensor.shape) on \(identity)")
        let output = Tensor.empty([size * tensor.shape[0]] + tensor.shape.dropFirst(), dtype: tensor.dtype, device: device)
        guard tensor.count > 0 else { return output }
        let end = enqueue(operation) { stream in
            try communicator.allGather(send: pointer(tensor), receive: pointer(output), countPerRank: tensor.count,
                                       dataType: type, stream: stream)
        }
        finish(end, keepAlive: [tensor, output])
        return output
    }

    public func reduceScatter(_ tensor: Tensor, _ op: ReduceOperation) -> Tensor {
        let operation = "reduceScatter(\(describe(tensor)), \(op))"
        let type = check(tensor, operation)
        guarantee(tensor.rank >= 1 && tensor.shape[0] % size == 0,
                  "\(operation): the first dimension of shape \(tensor.shape) must be a multiple of the group size \(size) on \(identity)")
        let output = Tensor.empty([tensor.shape[0] / size] + tensor.shape.dropFirst(), dtype: tensor.dtype, device: device)
        guard output.count > 0 else { return output }
        let end = enqueue(operation) { stream in
            try communicator.reduceScatter(send: pointer(tensor), receive: pointer(output), countPerRank: output.count,
                                           dataType: type, op: Self.ncclOp(op), stream: stream)
        }
        finish(end, keepAlive: [tensor, output])
        return output
    }

    /// One `ncclGroupStart`/`ncclGroupEnd` holding a send and a receive per peer (itself included);
    /// zero counts issue nothing, so a peer that sends or receives nothing costs nothing.
    public func allToAll(_ rows: Tensor, sendCounts: [Int], receiveCounts: [Int]) -> Tensor {
        let operation = "allToAll(\(describe(rows)), send \(sendCounts), receive \(receiveCounts))"
        let type = check(rows, operation)
        AllToAllCounts.check(rows: rows, sendCounts: sendCounts, receiveCounts: receiveCounts, rank: rank, size: size, group: name)
        let width = rows.shape[1]
        let output = Tensor.empty([receiveCounts.reduce(0, +), width], dtype: rows.dtype, device: device)
        let rowBytes = UInt64(width * rows.dtype.byteSize)
        guard width > 0, sendCounts.contains(where: { $0 > 0 }) || receiveCounts.contains(where: { $0 > 0 }) else {
            return output
        }
        let end = enqueue(operation) { stream in
            try communicator.nccl.group {
                var sendOffset: UInt64 = 0, receiveOffset: UInt64 = 0
                for peer in 0..<size {
                    if sendCounts[peer] > 0 {
                        try communicator.send(pointer(rows) + sendOffset, count: sendCounts[peer] * width,
                                              dataType: type, peer: peer, stream: stream)
                    }
                    if receiveCounts[peer] > 0 {
                        try communicator.receive(into: pointer(output) + receiveOffset, count: receiveCounts[peer] * width,
                                                 dataType: type, peer: peer, stream: stream)
                    }
                    sendOffset += UInt64(sendCounts[peer]) * rowBytes
                    receiveOffset += UInt64(receiveCounts[peer]) * rowBytes
                }
            }
        }
        finish(end, keepAlive: [rows, output])
        return output
    }

    /// NCCL has no barrier: an all-reduce of one integer, and the host waits for it (the only collective
    /// here that blocks the host, as its contract requires). The watchdog still times it.
    public func barrier() {
        let token = Tensor.zeros([1], dtype: .int32, device: device)
        let operation = "barrier"
        let end = enqueue(operation) { stream in
            try communicator.allReduce(send: pointer(token), receive: pointer(token), count: 1,
                                       dataType: .int32, op: .sum, stream: stream)
        }
        finish(end, keepAlive: [token])
        end.synchronize()
    }

    /// `ncclCommSplit` (NCCL 2.18 or later): each color becomes a group with its own communication stream,
    /// named "<this name>/<color>". Without `ncclCommSplit` the process stops with a message saying
    /// which NCCL to install.
    public func split(color: Int, key: Int) -> any ProcessGroup {
        guarantee(color >= 0, "split(color: \(color), key: \(key)): colors are 0 or more on \(identity)")
        do {
            let child = try communicator.split(color: color, key: key)
            return try NCCLProcessGroup(communicator: child, gpu: gpu, device: device, name: "\(name)/\(color)", timeout: timeout)
        } catch {
            NCCLWatchdog.exitWithMessage("fastmoe: split(color: \(color), key: \(key)) of \(identity) failed: \(error)")
        }
    }

    // MARK: Ordering

    /// Enqueues `body` on the communication stream after everything enqueued so far on the compute stream
    /// and returns the event that completes with it. The watchdog times it from now.
    private func enqueue(_ operation: String, _ body: (CUDAStream) throws -> Void) -> CUDAEvent {
        let start: CUDAEvent, end: CUDAEvent
        do {
            start = try CUDAEvent(device: gpu, timing: false)
            end = try CUDAEvent(device: gpu, timing: false)
        } catch {
            NCCLWatchdog.exitWithMessage("fastmoe: \(operation) on \(identity): could not create a CUDA event: \(error)")
        }
        start.record(on: gpu.stream)
        communicationStream.wait(for: start)
        let marker = NCCLWatchdog.shared.track(self, operation: operation)
        do {
            try body(communicationStream)
        } catch {
            NCCLWatchdog.stop(message: "fastmoe: NCCL \(operation) on \(identity) failed: \(error) "
                + "Check that every rank runs the same command and that no rank stopped.", aborting: [communicator])
        }
        end.record(on: communicationStream)
        marker.enqueued(end)
        return end
    }

    /// Orders the compute stream after the collective. `keepAlive` is held until then: once the compute
    /// stream waits on `end`, any later reuse of their memory (always enqueued on the compute stream)
    /// runs after the collective, so they may be freed.
    private func finish(_ end: CUDAEvent, keepAlive: [Tensor]) {
        gpu.stream.wait(for: end)
        withExtendedLifetime(keepAlive) {}
    }

    // MARK: Checks

    private func check(_ tensor: Tensor, _ operation: String) -> NCCLDataType {
        guarantee(tensor.device == device,
                  "\(operation): the tensor is on \(tensor.device), but \(identity) moves tensors on \(device)")
        guard let type = Self.ncclType(tensor.dtype) else {
            fatalError("\(operation): \(identity) moves float32, bfloat16 and int32 tensors, not \(tensor.dtype)")
        }
        return type
    }

    private func describe(_ tensor: Tensor) -> String { "\(tensor.shape) \(tensor.dtype)" }

    private func pointer(_ tensor: Tensor) -> CUdeviceptr { CUdeviceptr(tensor.address) }

    static func ncclType(_ dtype: DType) -> NCCLDataType? {
        switch dtype {
        case .float32: .float32
        case .bfloat16: .bfloat16
        case .int32: .int32
        case .float64: nil
        }
    }

    /// `average` is NCCL's `ncclAvg` (2.10 and later): the sum divided by the group size on the GPU, in
    /// the tensor's type (int32 truncates toward zero).
    static func ncclOp(_ op: ReduceOperation) -> NCCLReduceOp {
        switch op {
        case .sum: .sum
        case .average: .average
        case .max: .max
        }
    }
}
