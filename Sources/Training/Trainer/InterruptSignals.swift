// Ctrl-C and `kill` during a run (issue 13). The first SIGINT or SIGTERM only sets a flag: the
// trainer sees it between steps, finishes the step in flight, writes a checkpoint and returns, so the
// command can print how to resume. A second signal means "stop now": the handler exits at once with
// the same status. Nothing half-written survives that: files are written under temporary names, and
// the next start removes what a dead writer left (`AtomicFile.removeAbandonedTemporaries`).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Signals received since ``InterruptSignals/install()``; a handler may touch only lock-free state.
private let receivedSignals = Atomic<Int>(0)
private let lastSignal = Atomic<Int32>(0)

/// The signal handler: async-signal-safe (an atomic add, `write(2)`, `_exit(2)`).
private func handleSignal(_ signal: Int32) {
    let count = receivedSignals.add(1, ordering: .sequentiallyConsistent).newValue
    lastSignal.store(signal, ordering: .sequentiallyConsistent)
    let message: StaticString = count == 1
        ? "\nfastmoe: stopping after the step in flight (press Ctrl-C again to stop at once)\n"
        : "\nfastmoe: stopped at once; the newest complete checkpoint is intact\n"
    _ = write(2, message.utf8Start, message.utf8CodeUnitCount)
    if count > 1 { _exit(InterruptSignals.exitStatus) }
}

/// SIGINT and SIGTERM turned into a request to stop between training steps.
///
/// ```swift
/// InterruptSignals.install()
/// trainer.shouldStop = { InterruptSignals.received }
/// let summary = try trainer.run()
/// if summary.interrupted { exit(InterruptSignals.exitStatus) }
/// ```
public enum InterruptSignals {
    /// The exit status of a run stopped by a signal: 2, for a stop with its checkpoint written and
    /// for a second signal alike. Deliberately below 128: shells report 128 + N for a process *killed*
    /// by signal N, and this one stopped on its own terms (docs/troubleshooting.md, "Exit statuses").
    public static let exitStatus: Int32 = 2

    /// Installs the handlers for SIGINT and SIGTERM (idempotent).
    public static func install() {
        var action = sigaction()
        #if canImport(Glibc)
        action.__sigaction_handler.sa_handler = handleSignal
        #else
        action.__sigaction_u.__sa_handler = handleSignal
        #endif
        sigemptyset(&action.sa_mask)
        action.sa_flags = SA_RESTART  // reads and writes in flight continue instead of failing with EINTR
        sigaction(SIGINT, &action, nil)
        sigaction(SIGTERM, &action, nil)
    }

    /// Whether SIGINT or SIGTERM arrived since ``install()``.
    public static var received: Bool { receivedSignals.load(ordering: .sequentiallyConsistent) > 0 }

    /// The name of the last signal received ("SIGINT", "SIGTERM"), or nil.
    public static var lastSignalName: String? {
        switch lastSignal.load(ordering: .sequentiallyConsistent) {
        case SIGINT: return "SIGINT"
        case SIGTERM: return "SIGTERM"
        case 0: return nil
        case let other: return "signal \(other)"
        }
    }
}
