#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Tensors

/// Prints a run for a person: a header, then on a terminal one progress line rewritten in place
/// (carriage return), or, when the output is a file or a pipe, a plain line every logging interval;
/// evaluation and checkpoint lines; and a final summary that puts the validation loss next to the
/// unigram entropy of the data.
///
/// ```text
/// step 240/600 │ loss 1.412 │ 15.2k tok/s │ lr 1.6e-03 │ 0:58 │ ETA 1:27 │ max/mean 1.18 1.31
/// ```
public final class ConsoleReporter: @unchecked Sendable {
    /// Rewrite one line in place (a terminal) or print plain lines.
    public let isTerminal: Bool
    let write: (String) -> Void
    private var lastDraw: Double = -1
    private var lineShown = false

    /// - Parameters:
    ///   - isTerminal: nil = whether standard output is a terminal (`isatty(1)`).
    ///   - write: where text goes (default: standard output, flushed).
    public init(isTerminal: Bool? = nil, write: ((String) -> Void)? = nil) {
        self.isTerminal = isTerminal ?? (isatty(1) == 1)
        self.write = write ?? { text in
            fputs(text, stdout)
            fflush(stdout)
        }
    }

    /// Prints `event`; pass it as a trainer's `onEvent`.
    public func handle(_ event: TrainingEvent) {
        switch event {
        case .started(let s): printLine(header(s))
        case .step(let p): step(p)
        case .evaluated(let step, let loss):
            printLine("eval  step \(step): val loss \(fixed(loss, 4)) (perplexity \(fixed(expDouble(loss), 2)))")
        case .checkpointSaved(_, let path): printLine("saved \(path)")
        case .finished(let s): printLine(summary(s))
        }
    }

    func step(_ p: StepProgress) {
        let line = Self.progressLine(p)
        if isTerminal {
            // Redraw at most ~10 times a second: a terminal scrolling at thousands of steps/s is slow.
            let now = monotonicSeconds()
            guard p.step == p.totalSteps || now - lastDraw >= 0.1 else { return }
            lastDraw = now
            write("\r" + line + "\u{1B}[K")
            lineShown = true
        } else if p.isLogStep {
            write(line + "\n")
        }
    }

    /// A full line, first clearing a progress line in place.
    func printLine(_ text: String) {
        if lineShown {
            write("\r\u{1B}[K")
            lineShown = false
        }
        write(text + "\n")
    }

    /// `step 240/600 │ loss 1.412 │ 15.2k tok/s │ lr 1.6e-03 │ 0:58 │ ETA 1:27 │ max/mean 1.18 1.31`
    public static func progressLine(_ p: StepProgress) -> String {
        let width = String(p.totalSteps).count
        let stepText = String(repeating: " ", count: max(0, width - String(p.step).count)) + String(p.step)
        var parts = [
            "step \(stepText)/\(p.totalSteps)",
            "loss \(fixed(p.intervalLoss ?? p.loss, 3))",
            "\(compact(p.tokensPerSecond)) tok/s",
            "lr \(scientific(p.lr))",
            duration(p.elapsedSeconds),
            "ETA \(duration(p.etaSeconds))",
        ]
        if !p.balance.isEmpty { parts.append("max/mean " + p.balance.map { fixed($0, 2) }.joined(separator: " ")) }
        if !p.biasMagnitude.isEmpty { parts.append("|b| " + p.biasMagnitude.map { fixed($0, 3) }.joined(separator: " ")) }
        if let warning = p.warning { parts.append("WARNING " + warning) }
        return parts.joined(separator: " │ ")
    }

    func header(_ s: TrainingStart) -> String {
        let c = s.config
        var model = "\(c.layers) layers, d-model \(c.dModel), \(c.heads) heads, seq-len \(c.seqLen)"
        if c.isMoE {
            model += "; \(s.moeLayers.count) MoE layer\(s.moeLayers.count == 1 ? "" : "s") of \(c.experts) experts, top-\(c.effectiveTopK), \(c.gate) gate"
        }
        var lines = [
            "fastmoe train: \(model)",
            "  \(compact(Double(s.parameterCount))) parameters, \(compact(s.flopsPerToken)) FLOPs/token (fwd+bwd), "
                + "batch \(c.batchSize)×\(c.seqLen), \(c.precision) on \(s.device)",
            "  data: \(s.dataSource): \(compact(Double(s.trainTokens))) training / \(compact(Double(s.validationTokens))) validation tokens, "
                + "unigram entropy \(fixed(s.unigramEntropy, 3)) nats/token",
            "  output: \(s.outputDirectory)",
        ]
        if let r = s.resumedFrom { lines.append("  resuming from \(r) at step \(s.startStep)") }
        if let u = s.upcycledFrom { lines.append("  experts upcycled from the dense checkpoint \(u)") }
        return lines.joined(separator: "\n")
    }

    func summary(_ s: TrainingSummary) -> String {
        let gap = s.unigramEntropy - s.finalValLoss
        let verdict = gap > 0
            ? "\(fixed(gap, 3)) nats below: the model predicts from context"
            : "not below it: the model has not yet learned more than byte frequencies (train longer or raise --lr)"
        var lines = [
            "done: \(s.steps) steps in \(duration(s.elapsedSeconds)), \(compact(s.tokensPerSecond)) tokens/s",
            "  validation loss \(fixed(s.finalValLoss, 4)) nats/token (perplexity \(fixed(s.perplexity, 2)))",
            "  unigram entropy \(fixed(s.unigramEntropy, 4)) nats/token: \(verdict)",
        ]
        if s.skippedSteps > 0 { lines.append("  \(s.skippedSteps) steps skipped for a non-finite gradient norm") }
        if let c = s.checkpoint { lines.append("  checkpoint: \(c)") }
        lines.append("  report: fastmoe report \(s.outputDirectory)")
        return lines.joined(separator: "\n")
    }
}

// MARK: Number formatting (no Foundation)

/// `x` with `digits` decimals: `fixed(1.23456, 3)` = "1.235".
public func fixed(_ x: Double, _ digits: Int) -> String {
    guard x.isFinite else { return x.isNaN ? "nan" : (x > 0 ? "inf" : "-inf") }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let v = (Swift.abs(x) * scale).rounded()
    let whole = v / scale
    let wholeText = whole < 1e18 ? String(Int(whole.rounded(.down))) : String(whole)
    var frac = String(Int(v - whole.rounded(.down) * scale))
    while frac.count < digits { frac = "0" + frac }
    return (x < 0 && v > 0 ? "-" : "") + wholeText + (digits > 0 ? "." + frac : "")
}

/// `x` as `1.6e-03`.
func scientific(_ x: Double) -> String {
    guard x.isFinite, x != 0 else { return x == 0 ? "0" : fixed(x, 0) }
    var exponent = 0
    var m = Swift.abs(x)
    while m >= 10 { m /= 10; exponent += 1 }
    while m < 1 { m *= 10; exponent -= 1 }
    if fixed(m, 1) == "10.0" { m /= 10; exponent += 1 }
    let e = Swift.abs(exponent) < 10 ? "0\(Swift.abs(exponent))" : "\(Swift.abs(exponent))"
    return (x < 0 ? "-" : "") + fixed(m, 1) + "e" + (exponent < 0 ? "-" : "+") + e
}

/// `15234` → "15.2k", `2.1e9` → "2.10G".
func compact(_ x: Double) -> String {
    let a = Swift.abs(x)
    if a >= 1e12 { return fixed(x / 1e12, 2) + "T" }
    if a >= 1e9 { return fixed(x / 1e9, 2) + "G" }
    if a >= 1e6 { return fixed(x / 1e6, 2) + "M" }
    if a >= 1e3 { return fixed(x / 1e3, 1) + "k" }
    return fixed(x, 0)
}

/// Seconds as `m:ss` or `h:mm:ss`.
func duration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "--:--" }
    let s = Int(seconds.rounded())
    let (h, m, sec) = (s / 3600, (s / 60) % 60, s % 60)
    let ss = sec < 10 ? "0\(sec)" : "\(sec)"
    if h > 0 { return "\(h):\(m < 10 ? "0\(m)" : "\(m)"):\(ss)" }
    return "\(m):\(ss)"
}

func expDouble(_ x: Double) -> Double { exp(x) }

/// Seconds on a monotonic clock.
func monotonicSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}
