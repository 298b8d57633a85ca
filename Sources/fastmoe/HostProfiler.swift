#if canImport(Glibc)
import FastMoE
import Glibc
import Synchronization

/// A sampling profiler of the host's own CPU time, for steps bound by the host (many small
/// launches): `FASTMOE_HOST_PROFILE=FILE fastmoe …` samples the stack of the running thread on every
/// `SIGPROF` (each 500 µs of the process's CPU time) and writes, at exit, the distinct stacks with
/// their sample counts, heaviest first, one per line: `COUNT frame;frame;…` from the outermost
/// call in, each frame `module+0xOFFSET` (module-relative, so `nm` on the same build names them;
/// `scripts/fold-host-profile.py` does that and prints the functions by self and inclusive time).
enum HostProfiler {
    static let maxSamples = 60_000, maxDepth = 48
    /// Written only by the signal handler (one slot per sample, claimed through `taken`) until the
    /// report, which reads them after stopping the timer.
    nonisolated(unsafe) static var frames: UnsafeMutablePointer<UnsafeMutableRawPointer?>? = nil
    nonisolated(unsafe) static var depths: UnsafeMutablePointer<Int32>? = nil
    nonisolated(unsafe) static var outputPath = ""
    static let taken = Atomic<Int>(0)
    /// glibc's `backtrace` (execinfo.h is not in Swift's Glibc module), found at start.
    typealias Backtrace = @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>?, Int32) -> Int32
    nonisolated(unsafe) static var backtrace: Backtrace? = nil

    /// Starts sampling when `FASTMOE_HOST_PROFILE` names a file; the report is written at exit.
    static func startIfRequested() {
        guard let path = getenv("FASTMOE_HOST_PROFILE").map({ String(cString: $0) }), !path.isEmpty else { return }
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "backtrace") else {
            fputs("FASTMOE_HOST_PROFILE: glibc's backtrace was not found; not profiling\n", stderr)
            return
        }
        let backtrace = unsafeBitCast(symbol, to: Backtrace.self)
        HostProfiler.backtrace = backtrace
        outputPath = path
        frames = .allocate(capacity: maxSamples * maxDepth)
        depths = .allocate(capacity: maxSamples)
        // The first backtrace loads the unwinder (it allocates): not inside the handler.
        var warm = [UnsafeMutableRawPointer?](repeating: nil, count: 4)
        _ = backtrace(&warm, 4)
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in
            let slot = HostProfiler.taken.wrappingAdd(1, ordering: .relaxed).oldValue
            guard slot < HostProfiler.maxSamples, let frames = HostProfiler.frames, let depths = HostProfiler.depths,
                  let backtrace = HostProfiler.backtrace else { return }
            depths[slot] = backtrace(frames + slot * HostProfiler.maxDepth, Int32(HostProfiler.maxDepth))
        }
        action.sa_flags = SA_RESTART
        sigaction(SIGPROF, &action, nil)
        var timer = itimerval(it_interval: timeval(tv_sec: 0, tv_usec: 500), it_value: timeval(tv_sec: 0, tv_usec: 500))
        setitimer(__itimer_which_t(ITIMER_PROF.rawValue), &timer, nil)
        atexit { HostProfiler.report() }
    }

    /// Stops the timer and writes the stacks (see the type's comment).
    static func report() {
        var off = itimerval()
        setitimer(__itimer_which_t(ITIMER_PROF.rawValue), &off, nil)
        guard let frames, let depths else { return }
        let samples = min(taken.load(ordering: .relaxed), maxSamples)
        // Module-relative offsets from /proc/self/maps: the lowest mapping of each file is its load base.
        var mappings: [(start: UInt, end: UInt, module: String)] = []
        var bases: [String: UInt] = [:]
        if let maps = fopen("/proc/self/maps", "r") {
            var line = [CChar](repeating: 0, count: 4096)
            while fgets(&line, Int32(line.count), maps) != nil {
                let fields = String(cString: line).split(separator: " ", omittingEmptySubsequences: true)
                guard fields.count >= 6, fields[5].hasPrefix("/") else { continue }
                let range = fields[0].split(separator: "-")
                guard range.count == 2, let start = UInt(range[0], radix: 16), let end = UInt(range[1], radix: 16) else { continue }
                let module = fields[5].split(separator: "/").last.map { String($0.filter { $0 != "\n" }) } ?? "?"
                mappings.append((start, end, module))
                bases[module] = min(bases[module] ?? start, start)
            }
            fclose(maps)
        }
        var names: [UnsafeMutableRawPointer: String] = [:]
        func name(_ address: UnsafeMutableRawPointer) -> String {
            if let known = names[address] { return known }
            let a = UInt(bitPattern: address)
            var text = "?+0x" + String(a, radix: 16)
            if let m = mappings.first(where: { $0.start <= a && a < $0.end }), let base = bases[m.module] {
                text = m.module + "+0x" + String(a - base, radix: 16)
            }
            names[address] = text
            return text
        }
        var stacks: [String: Int] = [:]
        for s in 0..<samples {
            // Frames 0 and 1 are the handler and the kernel's signal trampoline.
            let depth = Int(depths[s])
            guard depth > 2 else { continue }
            let base = frames + s * maxDepth
            let stack = (2..<depth).reversed().compactMap { base[$0].map(name) }.joined(separator: ";")
            stacks[stack, default: 0] += 1
        }
        var text = "# \(samples) samples of 500 µs CPU time (\(taken.load(ordering: .relaxed)) taken)\n"
        for (stack, count) in stacks.sorted(by: { $0.value > $1.value }) { text += "\(count) \(stack)\n" }
        do {
            try AtomicFile.write(bytes: Array(text.utf8), to: outputPath)
        } catch {
            fputs("FASTMOE_HOST_PROFILE: cannot write \(outputPath): \(error)\n", stderr)
        }
    }
}
#else
enum HostProfiler {
    static func startIfRequested() {}
}
#endif
