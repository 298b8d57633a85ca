#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Tensors

/// CPU tensors across processes and machines, through Open MPI (`libmpi.so.40`, loaded at run time).
///
/// Start the ranks with `mpirun` (or `srun --mpi=pmix`); ``world()`` initializes MPI on first use
/// and finalizes it when the process exits. bfloat16 moves as 16-bit words and reduces in float32;
/// an average is a sum divided by `W` (an int32 average rounds toward zero).
///
/// Before each collective the ranks exchange what they are about to do (op, dtype, shape, root,
/// reduce operation, all-to-all counts: one small all-gather), so a mismatch stops every rank with
/// a message naming the op and the ranks instead of hanging or reading the wrong bytes.
///
/// ```swift
/// // mpirun -np 4 fastmoe train --device cpu ...
/// let world = try MPIProcessGroup.world()
/// world.allReduce(gradient, .average)
/// ```
public final class MPIProcessGroup: ProcessGroup, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    public let name: String
    public var device: Device { .cpu }
    let mpi: MPILibrary
    let communicator: MPILibrary.Handle

    init(mpi: MPILibrary, communicator: MPILibrary.Handle, name: String) {
        self.mpi = mpi
        self.communicator = communicator
        self.name = name
        var value: Int32 = 0
        mpi.check(mpi.commRank(communicator, &value), "MPI_Comm_rank", group: name)
        rank = Int(value)
        mpi.check(mpi.commSize(communicator, &value), "MPI_Comm_size", group: name)
        size = Int(value)
    }

    /// The group of every process of this MPI job (`MPI_COMM_WORLD`), initializing MPI on first use.
    /// - Throws: ``DistributedError`` when Open MPI is not installed or cannot start.
    public static func world() throws -> MPIProcessGroup {
        let mpi = try MPILibrary.shared()
        try initialize(mpi)
        return MPIProcessGroup(mpi: mpi, communicator: mpi.commWorld, name: "world")
    }

    /// Whether Open MPI can be loaded here.
    public static var isAvailable: Bool { (try? MPILibrary.shared()) != nil }

    /// One line for `fastmoe info`: the Open MPI library in use, or why there is none.
    public static func diagnostics() -> String {
        do {
            return "mpi: Open MPI \(try MPILibrary.shared().library.path)"
        } catch {
            return "mpi: not available (CPU ranks across processes need Open MPI: apt-get install openmpi-bin libopenmpi3)"
        }
    }

    private static let initialization = Mutex<Bool>(false)

    private static func initialize(_ mpi: MPILibrary) throws {
        try initialization.withLock { done in
            guard !done else { return }
            var already: Int32 = 0
            _ = mpi.initialized(&already)
            if already == 0 {
                var provided: Int32 = 0
                // MULTIPLE: data-parallel training may wait for gradient buckets on another thread.
                let code = mpi.initThread(nil, nil, MPILibrary.threadMultiple, &provided)
                guard code == 0 else {
                    throw DistributedError("MPI_Init_thread failed with code \(code); start the ranks with mpirun (mpirun -np N fastmoe ...) and check that every node has the same Open MPI")
                }
                atexit {
                    // Finalize once, and only if MPI is still up (a user may have finalized it).
                    guard let mpi = try? MPILibrary.shared() else { return }
                    var finished: Int32 = 0
                    _ = mpi.finalized(&finished)
                    if finished == 0 { _ = mpi.finalize() }
                }
            }
            done = true
        }
    }

    // MARK: Collectives

    public func allReduce(_ tensor: Tensor, _ op: ReduceOperation) {
        agree(.allReduce, tensor, reduce: op)
        let count = elementCount(tensor, "allReduce")
        if tensor.dtype == .bfloat16 {
            let wide = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
            defer { wide.deallocate() }
            HostReduction.widen(pointer(tensor), count: count, into: wide)
            mpi.check(mpi.allreduce(MPILibrary.inPlace, wide, Int32(count), mpi.float, reduction(op), communicator), "MPI_Allreduce", group: name)
            finishAverage(wide, count: count, op)
            HostReduction.narrow(wide, count: count, into: pointer(tensor))
        } else {
            mpi.check(mpi.allreduce(MPILibrary.inPlace, pointer(tensor), Int32(count), mpi.datatype(tensor.dtype), reduction(op), communicator),
                      "MPI_Allreduce", group: name)
            finishAverage(tensor, op)
        }
    }

    /// `MPI_Iallreduce`, completed by `wait()` (`MPI_Wait`, then the average's division and, for
    /// bfloat16, the rounding back from the float32 buffer the reduction ran in).
    public func allReduceAsync(_ tensor: Tensor, _ op: ReduceOperation) -> any CollectiveWork {
        agree(.allReduce, tensor, reduce: op)
        let count = elementCount(tensor, "allReduceAsync")
        let wide: UnsafeMutablePointer<Float>? = tensor.dtype == .bfloat16 ? .allocate(capacity: max(count, 1)) : nil
        if let wide { HostReduction.widen(pointer(tensor), count: count, into: wide) }
        var request: MPILibrary.Handle? = nil
        mpi.check(mpi.iallreduce(MPILibrary.inPlace, wide.map { UnsafeMutableRawPointer($0) } ?? pointer(tensor), Int32(count),
                                 wide == nil ? mpi.datatype(tensor.dtype) : mpi.float, reduction(op), communicator, &request),
                  "MPI_Iallreduce", group: name)
        return MPIWork(group: self, tensor: tensor, op: op, wide: wide, request: request)
    }

    public func broadcast(_ tensor: Tensor, root: Int) {
        guarantee(root >= 0 && root < size, "broadcast on MPI group '\(name)': root \(root) is not a rank of a group of size \(size)")
        agree(.broadcast, tensor, root: root)
        mpi.check(mpi.bcast(pointer(tensor), Int32(elementCount(tensor, "broadcast")), mpi.datatype(tensor.dtype), Int32(root), communicator),
                  "MPI_Bcast", group: name)
    }

    public func allGather(_ tensor: Tensor) -> Tensor {
        guarantee(tensor.rank >= 1, "allGather on MPI group '\(name)': rank \(rank) passes a scalar; gather tensors of rank ≥ 1")
        agree(.allGather, tensor)
        let out = Tensor.empty([size * tensor.shape[0]] + tensor.shape.dropFirst(), dtype: tensor.dtype)
        let count = Int32(elementCount(out, "allGather") / size)
        let type = mpi.datatype(tensor.dtype)
        mpi.check(mpi.allgather(pointer(tensor), count, type, pointer(out), count, type, communicator), "MPI_Allgather", group: name)
        return out
    }

    public func reduceScatter(_ tensor: Tensor, _ op: ReduceOperation) -> Tensor {
        guarantee(tensor.rank >= 1 && tensor.shape[0] % size == 0,
                  "reduceScatter on MPI group '\(name)': rank \(rank) passes shape \(tensor.shape), whose first dimension is not a multiple of the group size \(size)")
        agree(.reduceScatter, tensor, reduce: op)
        let out = Tensor.empty([tensor.shape[0] / size] + tensor.shape.dropFirst(), dtype: tensor.dtype)
        let block = elementCount(tensor, "reduceScatter") / size
        if tensor.dtype == .bfloat16 {
            let wide = UnsafeMutablePointer<Float>.allocate(capacity: max(tensor.count, 1))
            defer { wide.deallocate() }
            HostReduction.widen(pointer(tensor), count: tensor.count, into: wide)
            let result = UnsafeMutablePointer<Float>.allocate(capacity: max(block, 1))
            defer { result.deallocate() }
            mpi.check(mpi.reduceScatterBlock(wide, result, Int32(block), mpi.float, reduction(op), communicator),
                      "MPI_Reduce_scatter_block", group: name)
            finishAverage(result, count: block, op)
            HostReduction.narrow(result, count: block, into: pointer(out))
        } else {
            mpi.check(mpi.reduceScatterBlock(pointer(tensor), pointer(out), Int32(block), mpi.datatype(tensor.dtype), reduction(op), communicator),
                      "MPI_Reduce_scatter_block", group: name)
            finishAverage(out, op)
        }
        return out
    }

    public func allToAll(_ rows: Tensor, sendCounts: [Int], receiveCounts: [Int]) -> Tensor {
        AllToAllCounts.check(rows: rows, sendCounts: sendCounts, receiveCounts: receiveCounts, rank: rank, size: size, group: name)
        let sent = agree(.allToAll, rows, sendCounts: sendCounts)
        for peer in 0..<size where sent[peer][rank] != receiveCounts[peer] {
            guarantee(false, "allToAll on MPI group '\(name)': rank \(rank) expects \(receiveCounts[peer]) rows from rank \(peer), which sends it \(sent[peer][rank]) (receiveCounts[\(peer)] on rank \(rank) must equal sendCounts[\(rank)] on rank \(peer))")
        }
        let width = rows.shape[1]
        let out = Tensor.empty([receiveCounts.reduce(0, +), width], dtype: rows.dtype)
        _ = elementCount(rows, "allToAll")
        _ = elementCount(out, "allToAll")
        // MPI counts elements, in 32-bit ints: rows × width each (checked above to fit).
        func layout(_ counts: [Int]) -> (counts: [Int32], offsets: [Int32]) {
            var offsets: [Int32] = []
            var total = 0
            for c in counts { offsets.append(Int32(total)); total += c * width }
            return (counts.map { Int32($0 * width) }, offsets)
        }
        let send = layout(sendCounts), receive = layout(receiveCounts)
        let type = mpi.datatype(rows.dtype)
        mpi.check(mpi.alltoallv(pointer(rows), send.counts, send.offsets, type, pointer(out), receive.counts, receive.offsets, type, communicator),
                  "MPI_Alltoallv", group: name)
        return out
    }

    public func barrier() {
        agree(.barrier, nil)
        mpi.check(mpi.barrier(communicator), "MPI_Barrier", group: name)
    }

    /// `MPI_Comm_split`. The new communicator lives as long as the process: freeing it is
    /// collective, and Swift releases objects at different times on different ranks.
    public func split(color: Int, key: Int) -> any ProcessGroup {
        guarantee(color >= 0 && color <= Int(Int32.max), "split on MPI group '\(name)': rank \(rank) passes color \(color); colors must be in 0...\(Int32.max) (as in MPI_Comm_split)")
        guarantee(abs(key) <= Int(Int32.max), "split on MPI group '\(name)': rank \(rank) passes key \(key), which does not fit MPI's 32-bit int")
        agree(.split, nil)
        var created: MPILibrary.Handle? = nil
        mpi.check(mpi.commSplit(communicator, Int32(color), Int32(key), &created), "MPI_Comm_split", group: name)
        return MPIProcessGroup(mpi: mpi, communicator: created!, name: "\(name)/color \(color)")
    }

    // MARK: Helpers

    func reduction(_ op: ReduceOperation) -> MPILibrary.Handle { op == .max ? mpi.max : mpi.sum }

    /// MPI has no average: divide the sum by `W` here.
    func finishAverage(_ tensor: Tensor, _ op: ReduceOperation) {
        guard op == .average else { return }
        let p = pointer(tensor), n = tensor.count, w = size
        switch tensor.dtype {
        case .float32: finishAverage(p.assumingMemoryBound(to: Float.self), count: n, op)
        case .float64: for i in 0..<n { p.assumingMemoryBound(to: Double.self)[i] /= Double(w) }
        case .int32: for i in 0..<n { p.assumingMemoryBound(to: Int32.self)[i] /= Int32(w) }
        case .bfloat16: fatalError("bfloat16 averages run in float32")
        }
    }

    func finishAverage(_ values: UnsafeMutablePointer<Float>, count: Int, _ op: ReduceOperation) {
        guard op == .average else { return }
        for i in 0..<count { values[i] /= Float(size) }
    }

    /// The tensor's element count, which MPI takes as a 32-bit int.
    func elementCount(_ tensor: Tensor, _ op: String) -> Int {
        guarantee(tensor.device == .cpu, "\(op) on MPI group '\(name)': rank \(rank) passes a tensor on \(tensor.device); MPI groups move CPU tensors (use an NCCL group for GPU tensors)")
        guarantee(tensor.count <= Int(Int32.max), "\(op) on MPI group '\(name)': rank \(rank) passes \(tensor.count) elements; MPI counts are 32-bit, split the tensor below \(Int32.max) elements")
        return tensor.count
    }
}

/// An `MPI_Iallreduce` in flight.
final class MPIWork: CollectiveWork, @unchecked Sendable {
    private let group: MPIProcessGroup
    private let tensor: Tensor
    private let op: ReduceOperation
    /// State guarded by the mutex: the request until completion, and the float32 buffer of a bfloat16 reduction.
    private let state: Mutex<(request: MPILibrary.Handle?, wide: UnsafeMutablePointer<Float>?, done: Bool)>

    init(group: MPIProcessGroup, tensor: Tensor, op: ReduceOperation, wide: UnsafeMutablePointer<Float>?, request: MPILibrary.Handle?) {
        self.group = group
        self.tensor = tensor
        self.op = op
        state = Mutex((request, wide, false))
    }

    func wait() {
        state.withLock { state in
            guard !state.done else { return }
            group.mpi.check(group.mpi.wait(&state.request, nil), "MPI_Wait", group: group.name)
            if let wide = state.wide {
                group.finishAverage(wide, count: tensor.count, op)
                HostReduction.narrow(wide, count: tensor.count, into: pointer(tensor))
                wide.deallocate()
                state.wide = nil
            } else {
                group.finishAverage(tensor, op)
            }
            state.done = true
        }
    }

    deinit {
        // Work dropped without wait(): the request still writes into the tensor, so finish it.
        wait()
    }
}
