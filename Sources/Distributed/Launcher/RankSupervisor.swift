import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Starts the processes of a ``LaunchPlan``, relays their output as `[rank R] ` lines, and stops them
/// together: when one fails, the others get SIGTERM, then SIGKILL after the grace period; SIGINT and
/// SIGTERM sent to the launcher are forwarded to every rank (a second one kills them). ``run(forwardingSignals:)``
/// returns the launcher's exit status: the first failed rank's (a death by signal N counts as 128 + N),
/// else 0.
///
/// Every rank leads its own process group (signals reach what the rank started) and is armed with
/// `PR_SET_PDEATHSIG`, so ranks die with the launcher even if it is killed outright.
///
/// ```swift
/// let supervisor = try RankSupervisor(plan: plan, gracePeriod: .seconds(10))
/// let status = try supervisor.run(forwardingSignals: true)
/// ```
public final class RankSupervisor: @unchecked Sendable {
    public let plan: LaunchPlan
    public let gracePeriod: Duration
    private let relay: OutputRelay
    /// The self-pipe: signal handlers and ``requestStop(signal:)`` write a signal number into it, and
    /// the supervising loop reads it, so no work happens in a signal handler.
    private let wakeRead: Int32, wakeWrite: Int32
    private let started = Mutex<[Int32]>([])

    /// - Parameter output: receives every relayed line; the default writes to the launcher's stdout and stderr.
    public init(plan: LaunchPlan, gracePeriod: Duration,
                output: @escaping (LaunchOutputStream, [UInt8]) -> Void = RankSupervisor.writeToTerminal) throws {
        self.plan = plan
        self.gracePeriod = gracePeriod
        relay = OutputRelay(sink: output)
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw LaunchError("fastmoe launch: cannot create a pipe (errno \(errno))") }
        for fd in fds {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        wakeRead = fds[0]
        wakeWrite = fds[1]
    }

    deinit {
        close(wakeRead)
        close(wakeWrite)
    }

    /// The pids of the processes started so far (each also the id of its process group).
    public var startedProcessIDs: [Int32] { started.withLock { $0 } }

    /// As if the launcher had received `signal` (SIGINT, SIGTERM): forwards it to every rank. Thread-safe.
    public func requestStop(signal: Int32 = SIGTERM) {
        var byte = UInt8(truncatingIfNeeded: signal)
        _ = write(wakeWrite, &byte, 1)
    }

    /// Writes relayed output to the launcher's own stdout (fd 1) or stderr (fd 2).
    public static func writeToTerminal(_ stream: LaunchOutputStream, _ bytes: [UInt8]) {
        writeAll(stream == .standardOutput ? 1 : 2, bytes)
    }

    // MARK: Running

    private struct Rank {
        let process: LaunchedProcess
        let child: ChildProcess
        var status: Int32?
        var output: LineSplitter
        var errors: LineSplitter
        var outputOpen = true
        var errorsOpen = true

        var label: String { process.rank.map { "rank \($0)" } ?? "mpirun" }
    }

    /// Starts every process, supervises them until all have exited, and returns the exit status.
    /// Blocks the calling thread, which must live until it returns (the ranks' death signal is tied to it).
    /// - Parameter forwardingSignals: install SIGINT/SIGTERM/SIGHUP handlers that forward to the ranks
    ///   (the command-line tool does; tests that call ``requestStop(signal:)`` need not).
    public func run(forwardingSignals: Bool) throws -> Int32 {
        if forwardingSignals { SignalForwarding.install(writingTo: wakeWrite) }
        defer { if forwardingSignals { SignalForwarding.restore() } }

        let inherited = Self.currentEnvironment()
        let path = LaunchPlan.environmentPath
        var ranks: [Rank] = []
        let mpiTagged = plan.backend == .mpi
        for process in plan.processes {
            let child: ChildProcess
            do {
                child = try ChildProcess.start(process, inheritedEnvironment: inherited, searchPath: path)
            } catch {
                for rank in ranks { _ = kill(-rank.child.pid, SIGKILL) }
                for rank in ranks { var status: Int32 = 0; _ = waitpid(rank.child.pid, &status, 0) }
                throw error
            }
            started.withLock { $0.append(child.pid) }
            ranks.append(Rank(process: process, child: child, output: LineSplitter(carriageReturnEndsLine: !mpiTagged),
                              errors: LineSplitter(carriageReturnEndsLine: !mpiTagged)))
        }

        var failure: (label: String, status: Int32)?
        var forwardedSignal: Int32?
        var killDeadline: ContinuousClock.Instant?
        let clock = ContinuousClock()

        func stopOthers(_ signal: Int32) {
            for rank in ranks where rank.status == nil { _ = kill(-rank.child.pid, signal) }
            if killDeadline == nil { killDeadline = clock.now + gracePeriod }
        }

        while ranks.contains(where: { $0.status == nil }) {
            pollOnce(&ranks, timeoutMilliseconds: 50)
            for signal in drainWakeups() {
                if forwardedSignal == nil {
                    forwardedSignal = signal
                    note("fastmoe launch: received signal \(signal); forwarding it to every rank "
                         + "(SIGKILL after \(describe(gracePeriod)), or at a second signal)")
                    stopOthers(signal)
                } else {
                    stopOthers(SIGKILL)
                }
            }
            for i in ranks.indices where ranks[i].status == nil {
                var raw: Int32 = 0
                let reaped = waitpid(ranks[i].child.pid, &raw, WNOHANG)
                guard reaped == ranks[i].child.pid else { continue }
                let status = Self.launcherStatus(raw)
                ranks[i].status = status
                // The rank is gone; anything it left running in its group goes with it.
                _ = kill(-ranks[i].child.pid, SIGKILL)
                if status != 0 && failure == nil {
                    failure = (ranks[i].label, status)
                    if ranks.contains(where: { $0.status == nil }) {
                        note("fastmoe launch: \(ranks[i].label) \(Self.describeStatus(raw)); stopping the other ranks "
                             + "(SIGTERM, then SIGKILL after \(describe(gracePeriod)))")
                    } else {
                        note("fastmoe launch: \(ranks[i].label) \(Self.describeStatus(raw))")
                    }
                    stopOthers(SIGTERM)
                }
            }
            if let deadline = killDeadline, clock.now >= deadline {
                for rank in ranks where rank.status == nil { _ = kill(-rank.child.pid, SIGKILL) }
                killDeadline = clock.now + .seconds(3600)
            }
        }
        // Output written just before a rank exited may still sit in its pipe.
        let drainUntil = clock.now + .milliseconds(200)
        while ranks.contains(where: { $0.outputOpen || $0.errorsOpen }) && clock.now < drainUntil {
            pollOnce(&ranks, timeoutMilliseconds: 20)
        }
        for i in ranks.indices {
            let rank = ranks[i].process.rank
            ranks[i].output.finish { emit($0, rank: rank, stream: .standardOutput, tagged: mpiTagged) }
            ranks[i].errors.finish { emit($0, rank: rank, stream: .standardError, tagged: mpiTagged) }
            if ranks[i].outputOpen { close(ranks[i].child.standardOutput) }
            if ranks[i].errorsOpen { close(ranks[i].child.standardError) }
        }
        if let failure { return failure.status }
        if let forwardedSignal { return 128 + forwardedSignal }
        return 0
    }

    /// Waits up to `timeoutMilliseconds` for output or a wake-up, and relays what arrived.
    private func pollOnce(_ ranks: inout [Rank], timeoutMilliseconds: Int32) {
        var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        var owners: [(index: Int, isError: Bool)] = [(-1, false)]
        for (i, rank) in ranks.enumerated() {
            if rank.outputOpen { fds.append(pollfd(fd: rank.child.standardOutput, events: Int16(POLLIN), revents: 0)); owners.append((i, false)) }
            if rank.errorsOpen { fds.append(pollfd(fd: rank.child.standardError, events: Int16(POLLIN), revents: 0)); owners.append((i, true)) }
        }
        let ready = poll(&fds, nfds_t(fds.count), timeoutMilliseconds)
        guard ready > 0 else { return }
        let mpiTagged = plan.backend == .mpi
        var buffer = [UInt8](repeating: 0, count: 65536)
        for (k, entry) in fds.enumerated().dropFirst() where entry.revents != 0 {
            let (i, isError) = owners[k]
            let stream: LaunchOutputStream = isError ? .standardError : .standardOutput
            let rank = ranks[i].process.rank
            while true {
                let count = buffer.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress!, $0.count) }
                if count > 0 {
                    buffer.withUnsafeBytes { raw in
                        let bytes = UnsafeRawBufferPointer(rebasing: raw[0..<count])
                        if isError {
                            ranks[i].errors.append(bytes) { emit($0, rank: rank, stream: stream, tagged: mpiTagged) }
                        } else {
                            ranks[i].output.append(bytes) { emit($0, rank: rank, stream: stream, tagged: mpiTagged) }
                        }
                    }
                    continue
                }
                if count < 0 && (errno == EAGAIN || errno == EINTR) { break }
                // End of output (or an error reading it): this pipe is done.
                close(entry.fd)
                if isError { ranks[i].errorsOpen = false } else { ranks[i].outputOpen = false }
                break
            }
        }
    }

    private func emit(_ line: ArraySlice<UInt8>, rank: Int?, stream: LaunchOutputStream, tagged: Bool) {
        if tagged || rank == nil {
            relay.relayTagged(line, stream: stream)
        } else {
            relay.relay(line, rank: rank!, stream: stream)
        }
    }

    private func drainWakeups() -> [Int32] {
        var signals: [Int32] = []
        var byte: UInt8 = 0
        while read(wakeRead, &byte, 1) == 1 { signals.append(Int32(byte)) }
        return signals
    }

    private func note(_ message: String) {
        relay.sink(.standardError, Array((message + "\n").utf8))
    }

    private func describe(_ duration: Duration) -> String {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
        return seconds == seconds.rounded() ? "\(Int(seconds)) s" : "\(seconds) s"
    }

    // MARK: Status

    /// A `waitpid` status as a shell reports it: the exit code, or 128 + the signal that killed the process.
    static func launcherStatus(_ raw: Int32) -> Int32 {
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
    }

    static func describeStatus(_ raw: Int32) -> String {
        let signal = raw & 0x7f
        if signal == 0 { return "exited with status \((raw >> 8) & 0xff)" }
        let name = strsignal(signal).map { String(cString: $0) } ?? "signal \(signal)"
        return "was killed by signal \(signal) (\(name))"
    }

    static func currentEnvironment() -> [String] {
        var entries: [String] = []
        var cursor = environ
        while let entry = cursor.pointee {
            entries.append(String(cString: entry))
            cursor += 1
        }
        return entries
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return }
            offset += written
        }
    }
}

/// The launcher's SIGINT/SIGTERM/SIGHUP handlers: each writes the signal number into the supervisor's
/// self-pipe (`write` is async-signal-safe) and the supervising loop does the rest.
enum SignalForwarding {
    nonisolated(unsafe) static var wakeFD: Int32 = -1
    nonisolated(unsafe) static var previous: [Int32: sigaction] = [:]
    static let forwarded: [Int32] = [SIGINT, SIGTERM, SIGHUP]

    static func install(writingTo fd: Int32) {
        wakeFD = fd
        for signal in forwarded {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { signal in
                var byte = UInt8(truncatingIfNeeded: signal)
                _ = write(SignalForwarding.wakeFD, &byte, 1)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            var old = sigaction()
            _ = sigaction(signal, &action, &old)
            previous[signal] = old
        }
    }

    static func restore() {
        for (signal, old) in previous {
            var action = old
            _ = sigaction(signal, &action, nil)
        }
        previous = [:]
    }
}
