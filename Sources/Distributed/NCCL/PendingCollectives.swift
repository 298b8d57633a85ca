import CUDA

/// What the watchdog found wrong with a group's collectives.
enum WatchdogFinding: Equatable, Sendable {
    /// The oldest unfinished collective was enqueued longer ago than the timeout.
    case timedOut(operation: String, waited: Duration)
    /// Asking whether a collective finished failed (a CUDA error poisons the context).
    case failed(operation: String, error: String)
}

/// The collectives one group has enqueued and not yet seen finish, oldest first.
///
/// A group's collectives run in order on its one communication stream, so they finish in order: the
/// watchdog looks only at the front, drops what has finished, and times the first that has not.
/// `Marker` is the CUDA end event in the group; tests use a stand-in.
struct PendingCollectives<Marker> {
    struct Entry {
        let operation: String
        let enqueued: ContinuousClock.Instant
        let marker: Marker
    }

    private var entries: [Entry] = []
    /// Index of the oldest entry still pending (entries before it have finished); compacted as it grows.
    private var head = 0

    var count: Int { entries.count - head }

    mutating func append(operation: String, enqueued: ContinuousClock.Instant, marker: Marker) {
        entries.append(Entry(operation: operation, enqueued: enqueued, marker: marker))
    }

    /// Drops the finished collectives at the front. Returns the oldest unfinished one when it has waited
    /// longer than `timeout` at `now`, or the first whose query failed; nil while all is well.
    mutating func poll(now: ContinuousClock.Instant, timeout: Duration,
                       isFinished: (Marker) -> Result<Bool, CUDAError>) -> WatchdogFinding? {
        defer { compact() }
        while head < entries.count {
            let entry = entries[head]
            switch isFinished(entry.marker) {
            case .success(true):
                head += 1
            case .success(false):
                let waited = entry.enqueued.duration(to: now)
                return waited > timeout ? .timedOut(operation: entry.operation, waited: waited) : nil
            case .failure(let error):
                return .failed(operation: entry.operation, error: "\(error)")
            }
        }
        return nil
    }

    private mutating func compact() {
        if head == entries.count {
            entries.removeAll(keepingCapacity: true)
            head = 0
        } else if head > 64 && head * 2 > entries.count {
            entries.removeFirst(head)
            head = 0
        }
    }
}
