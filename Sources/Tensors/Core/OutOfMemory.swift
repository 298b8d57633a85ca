// What happens when an allocation fails. Tensor ops do not throw (DESIGN.md: misuse stops with
// `guarantee`), so a failed allocation cannot travel up as an error; but running out of memory is
// not misuse, and a crash report would tell the user nothing. The CLI estimates memory before it
// allocates (Training's MemoryEstimate); this is the path for what the estimate did not foresee:
// one clear line on standard error and a documented exit status, never `Fatal error`.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The end of a process whose allocation failed.
public enum OutOfMemory {
    /// The exit status of a process stopped by ``stop(device:byteCount:detail:)`` (0 = done,
    /// 1 = an error, 2 = interrupted; see docs/troubleshooting.md).
    public static let exitStatus: Int32 = 3

    /// Prints `fastmoe: out of memory on DEVICE: …` with the request, what tensors already hold and
    /// what to do, flushes standard output, and exits with ``exitStatus``.
    public static func stop(device: Device, byteCount: Int, detail: String? = nil) -> Never {
        let held = Backends.backend(for: device == .cpu ? .cpu : device).memoryStatistics.allocated
        var line = "fastmoe: out of memory on \(device): could not allocate \(describe(byteCount)) for a tensor "
            + "(tensors already hold \(describe(held))"
        if let detail { line += "; \(detail)" }
        line += "); make the model, batch, evaluation or data smaller (see docs/troubleshooting.md, \"out of memory\")\n"
        fflush(stdout)
        fputs(line, stderr)
        exit(exitStatus)
    }

    /// `12000000000` → "11.2 GiB".
    static func describe(_ bytes: Int) -> String {
        let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var v = Double(bytes), unit = 0
        while v >= 1024 && unit < units.count - 1 { v /= 1024; unit += 1 }
        if unit == 0 { return "\(bytes) bytes" }
        let tenths = Int((v * 10).rounded())
        return "\(tenths / 10).\(tenths % 10) \(units[unit])"
    }
}
