#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Tensors

/// The threads of one `ThreadProcessGroup.run`: one lock and one condition shared by every
/// communicator split from its world, and which ranks have left (returned or thrown).
///
/// A rank that leaves while its peers wait in a collective can never arrive, so the waiters stop
/// with a message instead of hanging the test that ran them.
final class ThreadWorld: @unchecked Sendable {
    let size: Int
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Why each world rank left (nil while it runs). Guarded by `mutex`.
    private var departures: [String?]

    init(size: Int) {
        self.size = size
        departures = Array(repeating: nil, count: size)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    /// Called with the lock held: sleeps until another thread broadcasts.
    func waitLocked() { pthread_cond_wait(condition, mutex) }

    /// Called with the lock held: wakes every waiting rank so it can recheck its condition.
    func broadcastLocked() { pthread_cond_broadcast(condition) }

    /// Records that world rank `rank` left, and why.
    func depart(_ rank: Int, reason: String) {
        locked {
            departures[rank] = reason
            broadcastLocked()
        }
    }

    /// Called with the lock held.
    func departureLocked(_ rank: Int) -> String? { departures[rank] }
}

/// What one rank brings to a collective: the op it called and its arguments.
struct Contribution {
    var op: String
    var dtype: DType = .float32
    var shape: [Int] = []
    /// Host address of the rank's tensor (CPU tensors only).
    var address: UInt = 0
    var root = 0
    var reduce: ReduceOperation? = nil
    var sendCounts: [Int] = []
    var receiveCounts: [Int] = []
    var color = 0
    var key = 0
    /// The communicator a split's leader created for its color.
    var created: ThreadCommunicator? = nil

    /// "float32 [2, 3]", for messages.
    var signature: String { "\(dtype) \(shape)" }
}

/// The shared state of one thread group: a slot per rank and a reusable barrier.
///
/// A collective is deposit → barrier → every rank reads every slot (and the tensors they point
/// to) → barrier. The second barrier is what lets a rank overwrite its tensor or its slot: no peer
/// reads them any more.
final class ThreadCommunicator: @unchecked Sendable {
    let world: ThreadWorld
    let name: String
    /// The world rank (thread) of each rank of this group.
    let members: [Int]
    private var slots: [Contribution?]
    private var arrived = 0
    private var generation = 0

    init(world: ThreadWorld, name: String, members: [Int]) {
        self.world = world
        self.name = name
        self.members = members
        slots = Array(repeating: nil, count: members.count)
    }

    var size: Int { members.count }

    /// Runs one collective for `rank`: `body` sees every rank's contribution, in rank order, while
    /// no rank can change its tensor.
    func collective<T>(rank: Int, _ contribution: Contribution, _ body: ([Contribution]) -> T) -> T {
        world.locked { slots[rank] = contribution }
        barrier(rank: rank, op: contribution.op)
        let all = world.locked { slots.map { $0! } }
        let result = body(all)
        barrier(rank: rank, op: contribution.op)
        return result
    }

    /// Returns when every rank of the group has arrived.
    func barrier(rank: Int, op: String) {
        world.locked {
            let mine = generation
            arrived += 1
            if arrived == members.count {
                arrived = 0
                generation &+= 1
                world.broadcastLocked()
                return
            }
            while generation == mine {
                for (peer, worldRank) in members.enumerated() {
                    if let reason = world.departureLocked(worldRank) {
                        // Unlocking is pointless: the process stops here.
                        fatalError("ThreadProcessGroup \(op) on group '\(name)': rank \(peer) \(reason) while rank \(rank) waits for it; every rank must call the same collectives in the same order")
                    }
                }
                world.waitLocked()
            }
        }
    }
}
