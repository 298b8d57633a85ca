#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization
import Tensors

/// W ranks as W threads of one process, over shared memory: the process group for tests and for
/// trying multi-rank code anywhere (nothing to install, nothing to launch).
///
/// Same semantics as the MPI and NCCL groups, on CPU tensors (float32, float64, bfloat16 reduced in
/// float32, int32). Reductions combine the ranks in rank order, so every rank gets bit-identical
/// results. Each rank runs on its own thread: ranks block on each other in collectives, so a pool
/// narrower than W (like `concurrentPerform` on a 2-core machine) would deadlock.
///
/// ```swift
/// let sums = try ThreadProcessGroup.run(worldSize: 4) { group in
///     let x = Tensor([Float(group.rank)])
///     group.allReduce(x, .sum)
///     return x.scalars()[0]          // 6 on every rank
/// }
/// ```
public final class ThreadProcessGroup: ProcessGroup, @unchecked Sendable {
    public let rank: Int
    public var size: Int { communicator.size }
    public var name: String { communicator.name }
    public var device: Device { .cpu }
    let communicator: ThreadCommunicator
    /// Started all-reduces not run yet, in the order they were started.
    private let pending = Mutex<[ThreadWork]>([])

    init(rank: Int, communicator: ThreadCommunicator) {
        self.rank = rank
        self.communicator = communicator
    }

    /// Runs `body` once per rank, each on its own thread, and returns the ranks' results in rank order.
    ///
    /// Waits for every rank. If a rank throws, the first error by rank is rethrown after all ranks
    /// have finished; a rank that returns or throws while its peers wait for it in a collective stops
    /// the process with a message naming both (the alternative is a hang).
    /// - Parameters:
    ///   - worldSize: W ≥ 1.
    ///   - name: the world group's name in messages.
    public static func run<Result>(worldSize: Int, name: String = "world",
                                   _ body: @escaping (ThreadProcessGroup) throws -> Result) throws -> [Result] {
        guarantee(worldSize >= 1, "ThreadProcessGroup.run: worldSize must be at least 1, got \(worldSize)")
        let world = ThreadWorld(size: worldSize)
        let communicator = ThreadCommunicator(world: world, name: name, members: Array(0..<worldSize))
        let outcomes = Outcomes<Result>(count: worldSize)
        var threads: [pthread_t] = []
        for rank in 0..<worldSize {
            let group = ThreadProcessGroup(rank: rank, communicator: communicator)
            let task = RankTask {
                do {
                    outcomes.set(rank, .success(try body(group)))
                    world.depart(rank, reason: "returned")
                } catch {
                    outcomes.set(rank, .failure(error))
                    world.depart(rank, reason: "threw \"\(error)\"")
                }
            }
            threads.append(task.start(name: "rank \(rank)"))
        }
        for thread in threads { pthread_join(thread, nil) }
        return try outcomes.results()
    }

    // MARK: Collectives

    public func allReduce(_ tensor: Tensor, _ op: ReduceOperation) {
        completePending()
        performAllReduce(tensor, op)
    }

    private func performAllReduce(_ tensor: Tensor, _ op: ReduceOperation) {
        let mine = contribution("allReduce", tensor, reduce: op)
        let scratch = Tensor.empty(tensor.shape, dtype: tensor.dtype)
        communicator.collective(rank: rank, mine) { all in
            check(all, sameShape: true)
            HostReduction.reduce(all.map { UnsafeRawPointer(bitPattern: $0.address)! }, count: tensor.count,
                                 dtype: tensor.dtype, op: op, into: pointer(scratch))
        }
        // After the second barrier nobody reads `tensor` any more: now it may change.
        pointer(tensor).copyMemory(from: pointer(scratch), byteCount: tensor.byteCount)
    }

    /// Queues the all-reduce; `wait()` runs it (with every collective queued before it, in the
    /// order they were started, as MPI matches nonblocking collectives), and so does the next
    /// blocking collective of this group. Until then `tensor` keeps its value: code that reads it
    /// before `wait()` gets wrong numbers here, as it would on a GPU. Wait for every work before
    /// the rank returns: its peers wait for it.
    public func allReduceAsync(_ tensor: Tensor, _ op: ReduceOperation) -> any CollectiveWork {
        _ = contribution("allReduceAsync", tensor)
        let work = ThreadWork(group: self, tensor: tensor, op: op)
        pending.withLock { $0.append(work) }
        return work
    }

    /// Runs the queued all-reduces, oldest first, through `last` (all of them when nil).
    func completePending(through last: ThreadWork? = nil) {
        while true {
            // Run outside the lock: the all-reduce blocks until the peers arrive.
            let next: ThreadWork? = pending.withLock { queue in
                guard let last, last.isDone else { return queue.isEmpty ? nil : queue.removeFirst() }
                return nil
            }
            guard let next else { return }
            performAllReduce(next.tensor, next.op)
            next.isDone = true
        }
    }

    public func broadcast(_ tensor: Tensor, root: Int) {
        completePending()
        guarantee(root >= 0 && root < size, "broadcast on group '\(name)': root \(root) is not a rank of a group of size \(size)")
        var mine = contribution("broadcast", tensor)
        mine.root = root
        communicator.collective(rank: rank, mine) { all in
            check(all, sameShape: true)
            let roots = all.map(\.root)
            guarantee(Set(roots).count == 1, "broadcast on group '\(name)': the ranks name different roots \(roots) (by rank)")
            if rank != root {
                pointer(tensor).copyMemory(from: UnsafeRawPointer(bitPattern: all[root].address)!, byteCount: tensor.byteCount)
            }
        }
    }

    public func allGather(_ tensor: Tensor) -> Tensor {
        completePending()
        guarantee(tensor.rank >= 1, "allGather on group '\(name)': rank \(rank) passes a scalar; gather tensors of rank ≥ 1")
        let out = Tensor.empty([size * tensor.shape[0]] + tensor.shape.dropFirst(), dtype: tensor.dtype)
        communicator.collective(rank: rank, contribution("allGather", tensor)) { all in
            check(all, sameShape: true)
            for (peer, c) in all.enumerated() {
                (pointer(out) + peer * tensor.byteCount)
                    .copyMemory(from: UnsafeRawPointer(bitPattern: c.address)!, byteCount: tensor.byteCount)
            }
        }
        return out
    }

    public func reduceScatter(_ tensor: Tensor, _ op: ReduceOperation) -> Tensor {
        completePending()
        guarantee(tensor.rank >= 1 && tensor.shape[0] % size == 0,
                  "reduceScatter on group '\(name)': rank \(rank) passes shape \(tensor.shape), whose first dimension is not a multiple of the group size \(size)")
        let block = tensor.count / size
        let out = Tensor.empty([tensor.shape[0] / size] + tensor.shape.dropFirst(), dtype: tensor.dtype)
        communicator.collective(rank: rank, contribution("reduceScatter", tensor, reduce: op)) { all in
            check(all, sameShape: true)
            let offset = rank * block * tensor.dtype.byteSize
            HostReduction.reduce(all.map { UnsafeRawPointer(bitPattern: $0.address)! + offset }, count: block,
                                 dtype: tensor.dtype, op: op, into: pointer(out))
        }
        return out
    }

    public func allToAll(_ rows: Tensor, sendCounts: [Int], receiveCounts: [Int]) -> Tensor {
        completePending()
        AllToAllCounts.check(rows: rows, sendCounts: sendCounts, receiveCounts: receiveCounts, rank: rank, size: size, group: name)
        let width = rows.shape[1]
        let out = Tensor.empty([receiveCounts.reduce(0, +), width], dtype: rows.dtype)
        var mine = contribution("allToAll", rows)
        mine.sendCounts = sendCounts
        mine.receiveCounts = receiveCounts
        communicator.collective(rank: rank, mine) { all in
            check(all, sameShape: false)
            let widths = all.map { $0.shape[1] }
            guarantee(Set(widths).count == 1, "allToAll on group '\(name)': the ranks' rows have different widths \(widths) (by rank)")
            for (peer, c) in all.enumerated() where c.sendCounts[rank] != receiveCounts[peer] {
                guarantee(false, "allToAll on group '\(name)': rank \(rank) expects \(receiveCounts[peer]) rows from rank \(peer), which sends it \(c.sendCounts[rank]) (receiveCounts[\(peer)] on rank \(rank) must equal sendCounts[\(rank)] on rank \(peer))")
            }
            let rowBytes = width * rows.dtype.byteSize
            var written = 0
            for (peer, c) in all.enumerated() {
                let first = c.sendCounts[..<rank].reduce(0, +)
                let source = UnsafeRawPointer(bitPattern: c.address)! + first * rowBytes
                (pointer(out) + written).copyMemory(from: source, byteCount: receiveCounts[peer] * rowBytes)
                written += receiveCounts[peer] * rowBytes
            }
        }
        return out
    }

    public func barrier() {
        completePending()
        communicator.collective(rank: rank, Contribution(op: "barrier")) { all in check(all, sameShape: false) }
    }

    public func split(color: Int, key: Int) -> any ProcessGroup {
        completePending()
        guarantee(color >= 0, "split on group '\(name)': rank \(rank) passes color \(color); colors must be ≥ 0 (as in MPI_Comm_split)")
        var mine = Contribution(op: "split")
        mine.color = color
        mine.key = key
        // Phase 1: learn every rank's color and key; the first rank of each new group creates it.
        let (members, created): ([Int], ThreadCommunicator?) = communicator.collective(rank: rank, mine) { all in
            check(all, sameShape: false)
            let members = all.indices.filter { all[$0].color == color }.sorted { (all[$0].key, $0) < (all[$1].key, $1) }
            guard members.first == rank else { return (members, nil) }
            return (members, ThreadCommunicator(world: communicator.world, name: "\(name)/color \(color)",
                                                members: members.map { communicator.members[$0] }))
        }
        // Phase 2: hand the leader's communicator to the other members.
        var handoff = Contribution(op: "split")
        handoff.created = created
        let shared = communicator.collective(rank: rank, handoff) { all in all[members[0]].created! }
        return ThreadProcessGroup(rank: members.firstIndex(of: rank)!, communicator: shared)
    }

    // MARK: Checks

    private func contribution(_ op: String, _ tensor: Tensor, reduce: ReduceOperation? = nil) -> Contribution {
        guarantee(tensor.device == .cpu, "\(op) on thread group '\(name)': rank \(rank) passes a tensor on \(tensor.device); thread groups move CPU tensors")
        return Contribution(op: op, dtype: tensor.dtype, shape: tensor.shape, address: tensor.address, reduce: reduce)
    }

    /// Every rank called the same op with the same reduce operation, dtype and (if asked) shape.
    private func check(_ all: [Contribution], sameShape: Bool) {
        let op = all[rank].op
        for (peer, c) in all.enumerated() where c.op != op {
            guarantee(false, "ThreadProcessGroup on group '\(name)': rank \(rank) called \(op) but rank \(peer) called \(c.op); every rank must call the same collectives in the same order")
        }
        for (peer, c) in all.enumerated() where c.reduce != all[rank].reduce {
            guarantee(false, "\(op) on group '\(name)': rank \(rank) reduces with \(all[rank].reduce.map(\.rawValue) ?? "-") but rank \(peer) with \(c.reduce.map(\.rawValue) ?? "-")")
        }
        for (peer, c) in all.enumerated() where c.dtype != all[rank].dtype || (sameShape && c.shape != all[rank].shape) {
            guarantee(false, "\(op) on group '\(name)': rank \(rank) passes \(all[rank].signature) but rank \(peer) passes \(c.signature); every rank must pass the same shape and dtype")
        }
    }
}

/// Work that finished before it was returned.
final class CompletedWork: CollectiveWork {
    func wait() {}
}

/// An all-reduce of a thread group, queued until `wait()` or the group's next blocking collective.
final class ThreadWork: CollectiveWork, @unchecked Sendable {
    let group: ThreadProcessGroup
    let tensor: Tensor
    let op: ReduceOperation
    /// Set by the rank's thread once the all-reduce ran (read under the group's queue lock).
    var isDone = false

    init(group: ThreadProcessGroup, tensor: Tensor, op: ReduceOperation) {
        self.group = group
        self.tensor = tensor
        self.op = op
    }

    func wait() { group.completePending(through: self) }
}

/// The host address of a CPU tensor's first element.
@inline(__always)
func pointer(_ tensor: Tensor) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: tensor.address)! }

/// The results of the ranks of `ThreadProcessGroup.run`, filled by their threads.
private final class Outcomes<Result>: @unchecked Sendable {
    private var outcomes: [Swift.Result<Result, any Error>?]
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init(count: Int) {
        outcomes = Array(repeating: nil, count: count)
        pthread_mutex_init(lock, nil)
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    func set(_ rank: Int, _ outcome: Swift.Result<Result, any Error>) {
        pthread_mutex_lock(lock)
        outcomes[rank] = outcome
        pthread_mutex_unlock(lock)
    }

    /// Call after every thread has been joined.
    func results() throws -> [Result] { try outcomes.map { try $0!.get() } }
}

/// A closure run on a new pthread (each rank needs a real thread of its own).
private final class RankTask {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }

    func start(name: String) -> pthread_t {
        let context = Unmanaged.passRetained(self).toOpaque()
        #if canImport(Glibc)
        var thread = pthread_t()
        #else
        var thread: pthread_t?
        #endif
        let status = pthread_create(&thread, nil, { context in
            let task = Unmanaged<RankTask>.fromOpaque(context!).takeRetainedValue()
            task.body()
            return nil
        }, context)
        guarantee(status == 0, "ThreadProcessGroup.run: cannot start the thread of \(name) (pthread_create error \(status))")
        #if canImport(Glibc)
        return thread
        #else
        return thread!
        #endif
    }
}
