import Testing
@testable import Training

/// `EqualTimeReading`: the runs' validation losses at the time the first run finished.
@Suite struct EqualTimeReadingTests {
    func evals(_ points: [(step: Int, loss: Double, seconds: Double)]) -> [EvalRecord] {
        points.map { EvalRecord(step: $0.step, valLoss: $0.loss, elapsedSeconds: $0.seconds) }
    }

    /// The dense run ends at 40 s; the MoE run, slower, is read a quarter of the way between its
    /// evaluations at 38 and 46 s (the numbers of benchmarks.md's torch-corpus comparison, rounded).
    @Test func theSlowerRunIsReadBetweenItsEvaluations() throws {
        let dense = evals([(0, 5.44, 0.3), (1500, 1.009, 20), (3000, 0.866, 40)])
        let moe = evals([(0, 5.45, 0.3), (2500, 0.886, 38), (3000, 0.866, 46)])
        let reading = try #require(EqualTimeReading([("moe-8e", moe), ("dense", dense)]))
        #expect(reading.seconds == 40 && reading.finishedFirst == "dense")
        #expect(reading.entries.map(\.name) == ["moe-8e", "dense"])
        let m = reading.entries[0], d = reading.entries[1]
        #expect(!d.interpolated && d.valLoss == 0.866 && d.step == 3000)
        #expect(m.interpolated && abs(m.valLoss - 0.881) < 1e-12 && m.step == 2625)
        #expect(reading.summary == "at 40.0 s (dense's end): moe-8e ≈ 0.8810 (≈ step 2625), dense 0.8660 (step 3000)")
    }

    /// No reading without two runs with evaluations, or when a run had none before the time.
    @Test func aReadingNeedsEvaluationsOnBothSidesOfTheTime() {
        let short = evals([(0, 5, 1), (100, 3, 10)])
        #expect(EqualTimeReading([("a", short)]) == nil)
        #expect(EqualTimeReading([("a", short), ("b", [])]) == nil)
        #expect(EqualTimeReading([("a", short), ("late", evals([(100, 2, 12)]))]) == nil)
        // A non-finite evaluation (a diverged run) is left out, not interpolated through.
        let reading = EqualTimeReading([("a", short), ("b", evals([(0, 5, 1), (50, .nan, 9), (100, 4, 11)]))])
        #expect(reading.map { abs($0.entries[1].valLoss - 4.1) < 1e-12 } == true)
    }
}
