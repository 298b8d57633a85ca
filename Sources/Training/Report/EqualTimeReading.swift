/// The validation losses of runs at one wall-clock time: the end of the run that finished first,
/// every other run's loss read off its evaluations by linear interpolation. It is the
/// validation-by-time chart of a comparison, as numbers: the reading that decides whether a
/// faster-per-step model is also better per second.
///
/// A run read between evaluations is on its own schedule there, not annealed to that time: the
/// curve a longer run passed through, not the loss a run of that length would end at.
/// ```swift
/// let reading = try ReportWriter.writeComparison(runDirectories: ["runs/cmp/dense", "runs/cmp/moe-8e"],
///                                                output: "runs/cmp/compare.html")
/// print(reading?.summary ?? "no evaluations to compare")
/// ```
public struct EqualTimeReading: Sendable {
    public struct Entry: Sendable {
        public let name: String
        public let valLoss: Double
        /// The step the run had reached at `seconds` (interpolated like the loss).
        public let step: Double
        /// False for the run that finished at `seconds` (its last evaluation).
        public let interpolated: Bool
    }

    /// Wall-clock seconds of the first run's last evaluation.
    public let seconds: Double
    /// The run that set `seconds`.
    public let finishedFirst: String
    public let entries: [Entry]

    /// Nil unless at least two runs have evaluations that reach `seconds` from both sides.
    init?(_ runs: [(name: String, eval: [EvalRecord])]) {
        let runs = runs.map { run in
            (name: run.name, eval: run.eval.filter { $0.valLoss.isFinite }.sorted { $0.elapsedSeconds < $1.elapsedSeconds })
        }
        guard runs.count >= 2, runs.allSatisfy({ !$0.eval.isEmpty }),
              let first = runs.min(by: { $0.eval.last!.elapsedSeconds < $1.eval.last!.elapsedSeconds }) else { return nil }
        let t = first.eval.last!.elapsedSeconds
        var entries: [Entry] = []
        for (name, eval) in runs {
            // Every run's last evaluation is at t or later, so `after` exists.
            let after = eval.firstIndex { $0.elapsedSeconds >= t }!, b = eval[after]
            if b.elapsedSeconds == t {
                entries.append(Entry(name: name, valLoss: b.valLoss, step: Double(b.step), interpolated: false))
                continue
            }
            guard after > 0 else { return nil }   // its first evaluation came after t
            let a = eval[after - 1], f = (t - a.elapsedSeconds) / (b.elapsedSeconds - a.elapsedSeconds)
            entries.append(Entry(name: name, valLoss: a.valLoss + f * (b.valLoss - a.valLoss),
                                 step: Double(a.step) + f * Double(b.step - a.step), interpolated: true))
        }
        (seconds, finishedFirst, self.entries) = (t, first.name, entries)
    }

    /// One line: `at 39.4 s (dense's end): dense 0.8660 (step 3000), moe-8e-top2 ≈ 0.8837 (≈ step 2558)`.
    public var summary: String {
        "at \(Format.fixed(seconds, 1)) s (\(finishedFirst)'s end): " + entries.map { e in
            e.interpolated
                ? "\(e.name) ≈ \(Format.fixed(e.valLoss, 4)) (≈ step \(Int(e.step.rounded())))"
                : "\(e.name) \(Format.fixed(e.valLoss, 4)) (step \(Int(e.step)))"
        }.joined(separator: ", ")
    }
}
