#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Training

/// A plausible run's metrics: loss falling from ~5.5 with noise, warmup then cosine learning rate,
/// jittery throughput; with `experts > 0`, two MoE layers: layer 0 starts skewed and balances, layer 1
/// slowly concentrates on expert 3.
func syntheticRun(directory: String, name: String, steps: Int = 2000, experts: Int = 8, speed: Double = 50_000,
                  seed: UInt64 = 1) throws {
    try FileSystem.makeDirectories(directory)
    let log = try MetricsLog(directory: directory)
    var rng = SplitMix64(seed: seed)
    func noise() -> Double { Double(rng.below(1_000_000)) / 1_000_000 - 0.5 }
    let tokensPerStep = 8 * 256.0
    var elapsed = 0.0
    for step in stride(from: 10, through: steps, by: 10) {
        let t = Double(step) / Double(steps)
        let loss = 1.1 + 4.4 * exp(-6 * t) + 0.08 * noise()
        let lr = step < 200 ? 6e-4 * Double(step) / 200 : 6e-5 + 0.5 * (6e-4 - 6e-5) * (1 + cos(Double.pi * t))
        let tokensPerSecond = speed * (1 + 0.06 * noise())
        elapsed += 10 * tokensPerStep / tokensPerSecond
        var moe: [MoELayerLoad]?
        if experts > 0 {
            moe = (0..<2).map { layer in
                let counts = (0..<experts).map { e -> Int in
                    let skew = layer == 0 ? (e == 0 ? 4 * (1 - t) : 0) : (e == 3 ? 3 * t : 0)
                    return Int(256 * (1 + skew) * (1 + 0.2 * noise()))
                }
                return MoELayerLoad(layer: layer, counts: counts, droppedFraction: layer == 1 ? 0.05 * t : 0)
            }
        }
        try log.append(.train(TrainRecord(step: step, loss: loss, lr: lr, tokensPerSecond: tokensPerSecond,
                                          elapsedSeconds: elapsed, moe: moe)))
        if step % 100 == 0 {
            try log.append(.eval(EvalRecord(step: step, valLoss: 1.15 + 0.04 * Double(seed) + 4.4 * exp(-6 * t), elapsedSeconds: elapsed + 0.4)))
        }
    }
    writeText("{\"name\":\"\(name.replacing("\"", with: "\\\""))\",\"config\":{\"layers\":4,\"moe\":{\"experts\":\(experts),\"top_k\":2},\"lr\":0.0006}}",
              to: directory + "/state.json")
}

/// Where to put reports: `$FASTMOE_REPORT_OUT` to keep them for viewing, else a temporary directory.
func reportDirectory(_ temporary: TemporaryDirectory) -> String {
    if let kept = getenv("FASTMOE_REPORT_OUT") { return String(cString: kept) }
    return temporary.path
}

func occurrences(of needle: String, in text: String) -> Int { text.ranges(of: needle).count }

@Suite struct ReportWriterTests {
    @Test func moeReportHasEveryChart() throws {
        let temporary = TemporaryDirectory()
        let run = reportDirectory(temporary) + "/moe-run"
        try syntheticRun(directory: run, name: "moe <8e> & \"top-2\"")
        try ReportWriter.writeReport(runDirectory: run)
        let html = try readText(run + "/report.html")
        #expect(html.hasPrefix("<!DOCTYPE html>"))
        #expect(!html.contains("<script") && !html.contains("http://fonts") && !html.contains("<link"))
        // Loss, lr, throughput, max/mean, dropped: five line charts; two heatmaps.
        #expect(occurrences(of: "<svg class=\"chart\"", in: html) == 5)
        #expect(occurrences(of: "<svg class=\"chart heatmap\"", in: html) == 2)
        #expect(html.contains("aria-label=\"expert load of layer 0\"") && html.contains("aria-label=\"expert load of layer 1\""))
        #expect(occurrences(of: "<linearGradient", in: html) == 2)
        // Train + validation in the loss chart, lr, throughput, 2 layers × (max/mean, dropped).
        #expect(occurrences(of: "<polyline", in: html) == 2 + 1 + 1 + 2 + 2)
        #expect(occurrences(of: "<circle", in: html) == 20)  // one marker per evaluation
        // 200 logging intervals ≤ 200 columns: one cell per interval and expert, for each layer.
        #expect(occurrences(of: "expert 7: ", in: html) == 2 * 200)
        #expect(html.contains("loss (nats/token) (log scale)"))
        // The run name is escaped wherever it appears, never raw.
        #expect(html.contains("moe &lt;8e&gt; &amp; &quot;top-2&quot;"))
        #expect(!html.contains("moe <8e>"))
        #expect(html.contains("<td>moe.experts</td><td>8</td>"))
    }

    @Test func denseReportHasNoHeatmap() throws {
        let temporary = TemporaryDirectory()
        let run = temporary.path + "/dense"
        try syntheticRun(directory: run, name: "dense", experts: 0)
        try ReportWriter.writeReport(runDirectory: run)
        let html = try readText(run + "/report.html")
        #expect(occurrences(of: "<svg class=\"chart\"", in: html) == 3)
        #expect(!html.contains("heatmap") && !html.contains("Expert load"))
    }

    @Test func reportWithoutStateOrEvaluationsStillRenders() throws {
        let temporary = TemporaryDirectory()
        let log = try MetricsLog(directory: temporary.file("bare"))
        try log.append(.train(TrainRecord(step: 1, loss: 5, lr: 0.1, tokensPerSecond: 10, elapsedSeconds: 1)))
        log.close()
        try ReportWriter.writeReport(runDirectory: temporary.file("bare"))
        let html = try readText(temporary.file("bare/report.html"))
        #expect(html.contains("<h1>bare</h1>"))  // the directory's name stands in for the run name
        #expect(occurrences(of: "<polyline", in: html) == 3)
    }

    @Test func resumedRunKeepsTheLastRecordOfARepeatedStep() throws {
        let temporary = TemporaryDirectory()
        let log = try MetricsLog(directory: temporary.path)
        for (step, loss) in [(1, 5.0), (2, 4.0), (3, 9.0), (2, 4.5), (3, 3.5)] {
            try log.append(.train(TrainRecord(step: step, loss: loss, lr: 0.1, tokensPerSecond: 10, elapsedSeconds: 1)))
        }
        log.close()
        let run = try RunData.load(directory: temporary.path)
        #expect(run.train.map(\.step) == [1, 2, 3])
        #expect(run.train.map(\.loss) == [5, 4.5, 3.5])
    }

    @Test func comparisonNamesEveryRun() throws {
        let temporary = TemporaryDirectory()
        let base = reportDirectory(temporary)
        try syntheticRun(directory: base + "/cmp-dense", name: "dense 25M", experts: 0, speed: 80_000, seed: 2)
        try syntheticRun(directory: base + "/cmp-moe", name: "moe 8x", speed: 55_000, seed: 3)
        try ReportWriter.writeComparison(runDirectories: [base + "/cmp-dense", base + "/cmp-moe"],
                                         output: base + "/compare.html")
        let html = try readText(base + "/compare.html")
        #expect(occurrences(of: "<svg class=\"chart\"", in: html) == 3)
        #expect(html.contains("wall-clock seconds"))
        // Each run in each chart's legend, and in the summary table.
        #expect(occurrences(of: ">dense 25M</text>", in: html) == 3 && occurrences(of: ">moe 8x</text>", in: html) == 3)
        #expect(html.contains("<td>dense 25M</td>") && html.contains("<td>moe 8x</td>"))
        // The faster run ends first; the other is read off its evaluations at that time.
        #expect(html.contains("Equal-time reading, at ") && html.contains("(dense 25M&#39;s end): dense 25M ")
            && html.contains("(step 2000), moe 8x ≈ "))
        #expect(errorMessage { try ReportWriter.writeComparison(runDirectories: [], output: base + "/x.html") }
            == "compare: no run directories given; name at least one run directory")
        #expect(errorMessage { try ReportWriter.writeComparison(runDirectories: [base + "/none"], output: base + "/x.html") }
            == "\(base)/none/metrics.jsonl: cannot read the metrics (No such file or directory); check that the run "
            + "directory has a metrics.jsonl")
    }

    @Test func damagedStateIsAnError() throws {
        let temporary = TemporaryDirectory()
        try syntheticRun(directory: temporary.path, name: "x", steps: 100)
        writeText("{\"name\": ", to: temporary.file("state.json"))
        #expect(errorMessage { try ReportWriter.writeReport(runDirectory: temporary.path) }
            == "\(temporary.file("state.json")): not valid JSON (line 1, column 10: unexpected end of text; a value "
            + "is missing); the run state is damaged — restore it from the checkpoint or delete it to report without it")
    }
}

@Suite struct ChartAxisTests {
    @Test func logTicksCoverTheRangeReadably() throws {
        let axis = try #require(ChartAxis(values: [1.1, 5.5], logarithmic: true))
        #expect(axis.ticks.count >= 4)
        #expect(axis.ticks.allSatisfy { $0 >= axis.lower && $0 <= axis.upper })
        #expect(axis.ticks == axis.ticks.sorted())
        #expect(axis.lower <= 1.1 && axis.upper >= 5.5)
        let wide = try #require(ChartAxis(values: [1e-5, 1e-1], logarithmic: true))
        #expect(wide.ticks.contains(1e-4) && wide.ticks.contains(1e-2))
    }

    @Test func linearTicksAreNiceMultiples() throws {
        let axis = try #require(ChartAxis(values: [3, 97], logarithmic: false, includeZero: true))
        #expect(axis.ticks == [0, 20, 40, 60, 80, 100])
        let flat = try #require(ChartAxis(values: [2, 2], logarithmic: false))
        #expect(flat.lower < 2 && flat.upper > 2)
        #expect(ChartAxis(values: [.nan, -1], logarithmic: true) == nil)
    }

    @Test(arguments: [(0.0003, "3e-4"), (6e-5, "6e-5"), (12_000, "12k"), (2.5, "2.5"), (1.25, "1.25"),
                      (100, "100"), (0, "0"), (-0.5, "-0.5"), (1_500_000, "1.5M"), (0.0123, "0.0123"),
                      (9.9996e-5, "1e-4"), (1234, "1234")])
    func formatsNumbers(value: Double, text: String) {
        #expect(Format.label(value) == text)
    }

    @Test func escapesHTML() {
        #expect(escapeHTML("<a href=\"x\">'&'</a>") == "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;")
    }

    @Test func heatmapColoursRunFromDarkToBright() {
        #expect(rgb(heatmapColor(0)) == "rgb(68,1,84)")
        #expect(rgb(heatmapColor(1)) == "rgb(253,231,37)")
        #expect(rgb(heatmapColor(2)) == "rgb(253,231,37)")  // clamped
    }

    /// The middle-anchored labels under the heatmap, as (x, text).
    func stepLabels(_ svg: String) -> [(x: String, text: String)] {
        svg.split(separator: "<text class=\"tick\" x=\"").dropFirst().compactMap { piece in
            guard piece.contains("text-anchor=\"middle\">") else { return nil }
            let x = String(piece.prefix { $0 != "\"" })
            let text = piece.split(separator: ">", maxSplits: 1)[1].prefix { $0 != "<" }
            return (x, String(text))
        }
    }

    /// Issue 8: two logging intervals (steps 10 and 20) are two columns, each labelled at its centre
    /// by its interval's last step; no tick sits between them.
    @Test func heatmapColumnsAreLabelledByTheirLastStep() {
        let map = ExpertHeatmap(id: "t", layer: 0, samples: [(10, [3, 1]), (20, [2, 2])])
        let labels = stepLabels(map.svg())
        // Plot 760 − 58 − 132 = 570 wide, two cells of 285: centres at 58 + 142.5 and 58 + 427.5.
        #expect(labels.map(\.x) == ["200.5", "485.5"])
        #expect(labels.map(\.text) == ["10", "20"])
    }

    @Test func longRunsLabelAtMostEightColumnsEndingWithTheLast() {
        #expect(ExpertHeatmap.labelledColumns(count: 1) == [0])
        #expect(ExpertHeatmap.labelledColumns(count: 5) == [0, 1, 2, 3, 4])
        let many = ExpertHeatmap.labelledColumns(count: 200)
        #expect(many.count <= ExpertHeatmap.maximumLabels && many.last == 199)
        #expect(zip(many, many.dropFirst()).allSatisfy { $1 - $0 == 25 })
        // 300 samples merge into 150 columns of 2; the last label is the run's last step.
        let merged = ExpertHeatmap(id: "m", layer: 1, samples: (1...300).map { ($0 * 10, [1, 1]) })
        #expect(stepLabels(merged.svg()).last?.text == "3000")
    }
}
