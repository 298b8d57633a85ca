import CUDA
import Synchronization
import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// How long a collective may run before the watchdog gives up on it: `FASTMOE_NCCL_TIMEOUT` seconds,
/// 600 (10 minutes) when unset.
///
/// ```swift
/// let timeout = try NCCLTimeout.fromEnvironment()          // FASTMOE_NCCL_TIMEOUT=120 → 120 s
/// let same = try NCCLTimeout.parse("120")
/// ```
public enum NCCLTimeout {
    /// The environment variable read by ``fromEnvironment()``.
    public static let variable = "FASTMOE_NCCL_TIMEOUT"
    /// Ten minutes: longer than any single collective of a healthy job, short enough to free a stuck allocation.
    public static let defaultSeconds = 600.0

    /// The timeout from `FASTMOE_NCCL_TIMEOUT`, or the default.
    /// - Throws: ``CUDAError/invalidArgument(_:)`` when the value is not a positive number of seconds.
    public static func fromEnvironment() throws -> Duration {
        try parse(getenv(variable).map { String(cString: $0) })
    }

    /// Parses a number of seconds (`"600"`, `"2.5"`); nil or empty gives the default.
    public static func parse(_ text: String?) throws -> Duration {
        guard let text, !text.isEmpty else { return seconds(defaultSeconds) }
        guard let value = Double(text), value.isFinite, value > 0 else {
            throw CUDAError.invalidArgument("\(variable)='\(text)' is not a positive number of seconds; set it to the "
                + "longest a collective may take (e.g. \(variable)=600 for 10 minutes), or unset it for the default")
        }
        return seconds(value)
    }

    static func seconds(_ value: Double) -> Duration {
        .milliseconds(Int64((value * 1000).rounded()))
    }
}

/// One collective as the watchdog sees it: in its NCCL host call until `enqueued(_:)` hands over the
/// event that its completion records.
final class CollectiveMarker: Sendable {
    private let end = Mutex<CUDAEvent?>(nil)

    func enqueued(_ event: CUDAEvent) { end.withLock { $0 = event } }

    /// Finished when its end event has completed; never while still inside the NCCL call.
    func query() -> Result<Bool, CUDAError> {
        guard let event = end.withLock({ $0 }) else { return .success(false) }
        return event.query()
    }
}

/// The background thread that keeps a stuck job from hanging forever.
///
/// Every 100 ms it asks each NCCL group's oldest unfinished collective whether it has finished
/// (`cuEventQuery` on its end event, which never blocks) and polls the communicator's asynchronous
/// error (`ncclCommGetAsyncError`: NCCL reports peers that vanished and network failures only there).
/// A collective older than the group's timeout, or an asynchronous error, prints a message naming
/// the op, the group and the rank, aborts the communicator (`ncclCommAbort`, which also unblocks
/// this rank's kernels) and exits the process with status ``exitStatus``: a launcher then stops the
/// other ranks. Exiting is the only sound way out: after an abort the GPU work that depended on the
/// collective can neither finish nor be cancelled.
final class NCCLWatchdog: @unchecked Sendable {
    /// The process exit status after a timeout or an NCCL error.
    static let exitStatus: Int32 = 1
    static let pollInterval: useconds_t = 100_000

    static let shared = NCCLWatchdog()

    /// One group's communicator and its collectives in flight.
    struct Watched {
        let communicator: NCCLCommunicator
        let description: String
        let timeout: Duration
        var pending = PendingCollectives<CollectiveMarker>()
    }

    private let state = Mutex<(groups: [ObjectIdentifier: Watched], started: Bool)>(([:], false))

    /// Watches `group`'s communicator from now on (starts the thread on first use).
    func register(_ group: NCCLProcessGroup) {
        let startThread = state.withLock { state -> Bool in
            state.groups[ObjectIdentifier(group)] = Watched(
                communicator: group.communicator, description: group.identity, timeout: group.timeout)
            defer { state.started = true }
            return !state.started
        }
        if startThread { startPolling() }
    }

    /// Stops watching `group` (it is being destroyed).
    func unregister(_ group: NCCLProcessGroup) {
        _ = state.withLock { $0.groups.removeValue(forKey: ObjectIdentifier(group)) }
    }

    /// Starts timing a collective before its NCCL call: the call itself may block the host (NCCL
    /// connects to peers lazily, inside the first collective that needs them), and a peer that never
    /// comes must still be caught. The caller hands the end event to the marker once enqueued.
    func track(_ group: NCCLProcessGroup, operation: String) -> CollectiveMarker {
        let now = ContinuousClock.now, marker = CollectiveMarker()
        state.withLock { state in
            state.groups[ObjectIdentifier(group)]?.pending.append(operation: operation, enqueued: now, marker: marker)
        }
        return marker
    }

    private func startPolling() {
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { _ in
            NCCLWatchdog.shared.pollForever()
            return nil
        }, nil)
        guarantee(result == 0, "NCCL watchdog: pthread_create failed with error \(result)")
        pthread_detach(thread)
    }

    private func pollForever() {
        while true {
            usleep(Self.pollInterval)
            if let (message, communicator) = checkOnce() {
                NCCLWatchdog.stop(message: message, aborting: [communicator])
            }
        }
    }

    /// One round over every group: the first problem found, with the communicator to abort.
    func checkOnce() -> (String, NCCLCommunicator)? {
        let now = ContinuousClock.now
        return state.withLock { state -> (String, NCCLCommunicator)? in
            for key in state.groups.keys {
                guard var watched = state.groups[key] else { continue }
                if let error = watched.communicator.asyncError() {
                    return (Self.asyncErrorMessage(group: watched.description, error: "\(error)"), watched.communicator)
                }
                let finding = watched.pending.poll(now: now, timeout: watched.timeout) { $0.query() }
                state.groups[key] = watched
                if let finding {
                    return (Self.message(for: finding, group: watched.description, timeout: watched.timeout), watched.communicator)
                }
            }
            return nil
        }
    }

    // MARK: Messages

    static func message(for finding: WatchdogFinding, group: String, timeout: Duration) -> String {
        switch finding {
        case let .timedOut(operation, waited):
            return "fastmoe: NCCL \(operation) on \(group) has not finished after \(describe(waited)) "
                + "(\(NCCLTimeout.variable) is \(describe(timeout))). Another rank probably stopped, crashed, or called a "
                + "different collective: look for an error in the other ranks' output, check that every rank runs the same "
                + "command, and rerun with NCCL_DEBUG=INFO to see where NCCL waits. Raise \(NCCLTimeout.variable) (seconds) "
                + "if a step legitimately takes longer. Aborting the NCCL communicator and exiting."
        case let .failed(operation, error):
            return "fastmoe: waiting for NCCL \(operation) on \(group) failed: \(error). A kernel on this GPU faulted; "
                + "the first error above is the cause. Aborting the NCCL communicator and exiting."
        }
    }

    static func asyncErrorMessage(group: String, error: String) -> String {
        "fastmoe: NCCL reported an asynchronous error on \(group): \(error). A peer rank probably crashed or the network "
            + "between the ranks failed: look for an error in the other ranks' output, and rerun with NCCL_DEBUG=INFO "
            + "(and NCCL_SOCKET_IFNAME set to the interface the nodes share) to see which connection broke. "
            + "Aborting the NCCL communicator and exiting."
    }

    static func describe(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let tenths = (Double(seconds) + Double(attoseconds) * 1e-18) * 10
        let rounded = tenths.rounded() / 10
        return rounded == rounded.rounded() ? "\(Int(rounded)) s" : "\(rounded) s"
    }

    // MARK: Stopping

    /// Prints `message` to standard error, aborts `communicators` (giving up on them after 10 s: an abort
    /// can itself wait on a wedged driver) and exits with ``exitStatus``. Never returns.
    static func stop(message: String, aborting communicators: [NCCLCommunicator]) -> Never {
        writeToStandardError(message + "\n")
        let box = AbortBox(communicators: communicators)
        var thread = pthread_t()
        let context = Unmanaged.passRetained(box).toOpaque()
        if pthread_create(&thread, nil, { raw in
            let box = Unmanaged<AbortBox>.fromOpaque(raw!).takeRetainedValue()
            for communicator in box.communicators { communicator.abort() }
            box.finished.store(true, ordering: .releasing)
            return nil
        }, context) == 0 {
            pthread_detach(thread)
            for _ in 0..<100 where !box.finished.load(ordering: .acquiring) { usleep(100_000) }
        }
        // _exit, not exit: atexit handlers and static destructors would touch CUDA and NCCL state that the
        // abort left behind, and could hang the exit itself.
        _exit(exitStatus)
    }

    /// Prints `message` and exits with ``exitStatus`` without aborting anything (setup failures).
    static func exitWithMessage(_ message: String) -> Never {
        writeToStandardError(message + "\n")
        _exit(exitStatus)
    }

    static func writeToStandardError(_ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return }
            offset += written
        }
    }
}

/// Carries the communicators to abort to the thread that aborts them.
private final class AbortBox: @unchecked Sendable {
    let communicators: [NCCLCommunicator]
    let finished = Atomic<Bool>(false)
    init(communicators: [NCCLCommunicator]) { self.communicators = communicators }
}
