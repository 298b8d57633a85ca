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
            printLine("eval  step \(step): val loss \(Format.fixed(loss, 4)) (perplexity \(Format.fixed(expDouble(loss), 2)))")
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
            "loss \(Format.fixed(p.intervalLoss ?? p.loss, 3))",
            "\(Format.compact(p.tokensPerSecond)) tok/s",
            "lr \(Format.scientific(p.lr))",
            Format.duration(p.elapsedSeconds),
            "ETA \(Format.duration(p.etaSeconds))",
        ]
        if !p.balance.isEmpty { parts.append("max/mean " + p.balance.map { Format.fixed($0, 2) }.joined(separator: " ")) }
        if !p.biasMagnitude.isEmpty { parts.append("|b| " + p.biasMagnitude.map { Format.fixed($0, 3) }.joined(separator: " ")) }
        if let warning = p.warning { parts.append("WARNING " + warning) }
        return parts.joined(separator: " │ ")
    }

    /// The end of a run stopped early: where it got to and the exact command that continues it.
    static func interruptedSummary(_ s: TrainingSummary) -> String {
        var lines = ["stopped at step \(s.steps) of \(s.totalSteps) after \(Format.duration(s.elapsedSeconds)) (interrupted)"]
        if let c = s.checkpoint {
            lines.append("  checkpoint: \(c)")
            lines.append("  continue with: fastmoe train --resume \(shellQuoted(s.outputDirectory))")
        } else {
            lines.append("  no checkpoint was written (--no-checkpoint-on-exit, and none before); start over with: "
                + "fastmoe train --out \(shellQuoted(s.outputDirectory)) --overwrite and the run's settings")
        }
        return lines.joined(separator: "\n")
    }

    /// `path` as one shell word: unchanged when it is plain, else in single quotes.
    static func shellQuoted(_ path: String) -> String {
        let plain = !path.isEmpty && path.unicodeScalars.allSatisfy {
            ($0.properties.isAlphabetic && $0.isASCII) || ("0"..."9").contains($0) || "/._-+,:@%=".unicodeScalars.contains($0)
        }
        return plain ? path : "'" + path.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
    }

    func header(_ s: TrainingStart) -> String {
        let c = s.config
        var model = "\(c.layers) layers, d-model \(c.dModel), \(c.heads) heads, seq-len \(c.seqLen)"
        if c.isMoE {
            model += "; \(s.moeLayers.count) MoE layer\(s.moeLayers.count == 1 ? "" : "s") of \(c.experts) experts, top-\(c.effectiveTopK), \(c.gate) gate"
        }
        var lines = [
            "fastmoe train: \(model)",
            "  \(Format.compact(Double(s.parameterCount))) parameters, \(Format.compact(s.flopsPerToken)) FLOPs/token (fwd+bwd), "
                + "batch \(Self.batch(s)), \(c.precision) on \(s.device)",
            "  data: \(s.dataSource): \(Format.compact(Double(s.trainTokens))) training / \(Format.compact(Double(s.validationTokens))) validation tokens, "
                + "unigram entropy \(Format.fixed(s.unigramEntropy, 3)) nats/token",
            "  output: \(s.outputDirectory)",
        ]
        if let r = s.resumedFrom { lines.append("  resuming from \(r) at step \(s.startStep)") }
        if let u = s.upcycledFrom { lines.append("  experts upcycled from the dense checkpoint \(u)") }
        lines += s.notes.map { "  note: " + $0 }
        return lines.joined(separator: "\n")
    }

    /// "16×64", or with W ranks the global batch and its split: "32×64 (4 ranks × 8)".
    static func batch(_ s: TrainingStart) -> String {
        let c = s.config
        guard s.worldSize > 1 else { return "\(c.batchSize)×\(c.seqLen)" }
        return "\(s.worldSize * c.batchSize)×\(c.seqLen) (\(s.worldSize) ranks × \(c.batchSize))"
    }

    func summary(_ s: TrainingSummary) -> String {
        if s.interrupted { return Self.interruptedSummary(s) }
        let gap = s.unigramEntropy - s.finalValLoss
        let verdict = gap > 0
            ? "\(Format.fixed(gap, 3)) nats below: the model predicts from context"
            : "not below it: the model has not yet learned more than byte frequencies (train longer or raise --lr)"
        var lines = [
            "done: \(s.steps) steps in \(Format.duration(s.elapsedSeconds)), \(Format.compact(s.tokensPerSecond)) tokens/s",
            "  validation loss \(Format.fixed(s.finalValLoss, 4)) nats/token (perplexity \(Format.fixed(s.perplexity, 2)))",
            "  unigram entropy \(Format.fixed(s.unigramEntropy, 4)) nats/token: \(verdict)",
        ]
        if s.skippedSteps > 0 { lines.append("  \(s.skippedSteps) steps skipped for a non-finite gradient norm") }
        if let c = s.checkpoint { lines.append("  checkpoint: \(c)") }
        lines.append("  report: fastmoe report \(s.outputDirectory)")
        return lines.joined(separator: "\n")
    }
}

func expDouble(_ x: Double) -> Double { exp(x) }

/// Seconds on a monotonic clock.
func monotonicSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}
