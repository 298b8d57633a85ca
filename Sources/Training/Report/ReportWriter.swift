// HTML reports of training runs, built from metrics.jsonl: one self-contained file (inline CSS and
// SVG, no scripts, no fonts or anything else fetched from a network) that opens anywhere, can be
// mailed, and still renders in ten years.

/// Writes `report.html` for a run directory, and comparison pages over several runs.
///
/// ```swift
/// try ReportWriter.writeReport(runDirectory: "runs/moe-8e")             // runs/moe-8e/report.html
/// try ReportWriter.writeComparison(runDirectories: ["runs/dense", "runs/moe-8e"], output: "compare.html")
/// ```
public enum ReportWriter {
    /// Reads `DIR/metrics.jsonl` (and `DIR/state.json` if present, for the run's name and config) and
    /// writes `DIR/report.html` atomically: loss (train and validation, log scale), learning rate and
    /// throughput against step, and for MoE runs an expert-load heatmap per layer and the max/mean load.
    public static func writeReport(runDirectory: String) throws {
        let run = try RunData.load(directory: runDirectory)
        let html = renderReport(run)
        try AtomicFile.write(bytes: Array(html.utf8), to: runDirectory + "/report.html")
    }

    /// Writes one page to `output` comparing the runs in `runDirectories`: validation loss against
    /// step and against wall-clock seconds with its equal-time reading (`EqualTimeReading`), and
    /// training loss against step, one series per run with a legend naming each. Returns the
    /// equal-time reading the page shows (nil where none can be made).
    @discardableResult
    public static func writeComparison(runDirectories: [String], output: String) throws -> EqualTimeReading? {
        guard !runDirectories.isEmpty else {
            throw MetricsError(description: "compare: no run directories given; name at least one run directory")
        }
        var runs = try runDirectories.map { try RunData.load(directory: $0) }
        // Two runs with the same name (e.g. the same config in two places) would share a legend entry.
        let names = runs.map(\.name)
        for i in runs.indices where names.filter({ $0 == runs[i].name }).count > 1 {
            runs[i].name = runs[i].directory
        }
        let reading = EqualTimeReading(runs.map { ($0.name, $0.eval) })
        let html = renderComparison(runs, reading: reading)
        try AtomicFile.write(bytes: Array(html.utf8), to: output)
        return reading
    }

    // MARK: Pages

    static func renderReport(_ run: RunData) -> String {
        var body = "<h1>\(escapeHTML(run.name))</h1>\n"
        body += "<p class=\"sub\">\(escapeHTML(run.directory))</p>\n"
        body += summaryTable([run])
        if !run.config.isEmpty {
            body += "<details><summary>Configuration</summary><table class=\"config\">\n"
            for (key, value) in run.config {
                body += "<tr><td>\(escapeHTML(key))</td><td>\(escapeHTML(value))</td></tr>\n"
            }
            body += "</table></details>\n"
        }

        body += section("Loss", note: "Training loss is the mean over each logging interval; validation loss is "
            + "measured on the same fixed windows at every evaluation.",
            LineChart(id: "loss", xLabel: "step", yLabel: "loss (nats/token)", series: [
                ChartSeries(name: "train", color: seriesPalette[0], points: run.train.map { (Double($0.step), $0.loss) },
                            strokeWidth: 1.3, opacity: 0.85),
                ChartSeries(name: "validation", color: seriesPalette[1],
                            points: run.eval.map { (Double($0.step), $0.valLoss) }, markers: true, strokeWidth: 2),
            ], logY: true).svg())
        body += section("Learning rate", note: nil,
            LineChart(id: "lr", xLabel: "step", yLabel: "learning rate", series: [
                ChartSeries(name: "lr", color: seriesPalette[2], points: run.train.map { (Double($0.step), $0.lr) }),
            ], yIncludesZero: true, height: 240).svg())
        body += section("Throughput", note: nil,
            LineChart(id: "throughput", xLabel: "step", yLabel: "tokens / s", series: [
                ChartSeries(name: "tokens/s", color: seriesPalette[3],
                            points: run.train.map { (Double($0.step), $0.tokensPerSecond) }),
            ], yIncludesZero: true, height: 240).svg())

        let layers = run.moeLayers
        if !layers.isEmpty {
            body += "<h2>Expert load</h2>\n<p class=\"note\">Each column is a logging interval, each row an "
                + "expert; the colour is the expert's share of the layer's routed tokens. A balanced layer is "
                + "uniform at 1/E.</p>\n"
            for layer in layers {
                let samples = run.train.compactMap { record -> (step: Int, counts: [Int])? in
                    guard let load = record.moe?.first(where: { $0.layer == layer }) else { return nil }
                    return (record.step, load.counts)
                }
                body += "<h3>Layer \(layer)</h3>\n<figure>"
                    + ExpertHeatmap(id: "layer\(layer)", layer: layer, samples: samples).svg() + "</figure>\n"
            }
            let layerSeries = { (value: (MoELayerLoad) -> Double) in
                layers.enumerated().map { (i, layer) in
                    ChartSeries(name: "layer \(layer)", color: seriesPalette[i % seriesPalette.count],
                                points: run.train.compactMap { record in
                                    record.moe?.first(where: { $0.layer == layer }).map { (Double(record.step), value($0)) }
                                })
                }
            }
            body += section("Load imbalance", note: "The busiest expert's token count over the mean count; "
                + "1 is perfect balance, E means one expert takes every token.",
                LineChart(id: "maxmean", xLabel: "step", yLabel: "max / mean tokens per expert",
                          series: layerSeries { $0.maxOverMean }, height: 260).svg())
            if run.train.contains(where: { $0.moe?.contains(where: { $0.droppedFraction > 0 }) ?? false }) {
                body += section("Dropped tokens", note: "Fraction of token-slots over expert capacity.",
                    LineChart(id: "dropped", xLabel: "step", yLabel: "dropped fraction",
                              series: layerSeries { $0.droppedFraction }, yIncludesZero: true, height: 240).svg())
            }
        }
        return page(title: "Run report: \(run.name)", body: body)
    }

    static func renderComparison(_ runs: [RunData], reading: EqualTimeReading?) -> String {
        var body = "<h1>Comparison of \(runs.count) runs</h1>\n" + summaryTable(runs)
        func series(_ points: (RunData) -> [(x: Double, y: Double)], markers: Bool) -> [ChartSeries] {
            runs.enumerated().map { (i, run) in
                ChartSeries(name: run.name, color: seriesPalette[i % seriesPalette.count], points: points(run),
                            markers: markers, strokeWidth: 1.8)
            }
        }
        body += section("Validation loss by step", note: nil,
            LineChart(id: "val-step", xLabel: "step", yLabel: "validation loss (nats/token)",
                      series: series({ $0.eval.map { (Double($0.step), $0.valLoss) } }, markers: true), logY: true).svg())
        body += section("Validation loss by wall-clock time", note: "Equal time, not equal steps: the fair "
            + "comparison when runs differ in speed.",
            LineChart(id: "val-time", xLabel: "wall-clock seconds", yLabel: "validation loss (nats/token)",
                      series: series({ $0.eval.map { ($0.elapsedSeconds, $0.valLoss) } }, markers: true), logY: true).svg())
        if let reading {
            body += "<p class=\"note\">Equal-time reading, \(escapeHTML(reading.summary)). A run read between its "
                + "evaluations (≈) is interpolated, on its own schedule, not annealed to that time.</p>\n"
        }
        body += section("Training loss by step", note: nil,
            LineChart(id: "train-step", xLabel: "step", yLabel: "training loss (nats/token)",
                      series: series({ $0.train.map { (Double($0.step), $0.loss) } }, markers: false), logY: true).svg())
        return page(title: "Run comparison", body: body)
    }

    static func section(_ title: String, note: String?, _ svg: String) -> String {
        var out = "<h2>\(escapeHTML(title))</h2>\n"
        if let note { out += "<p class=\"note\">\(escapeHTML(note))</p>\n" }
        return out + "<figure>" + svg + "</figure>\n"
    }

    static func summaryTable(_ runs: [RunData]) -> String {
        var out = "<table class=\"summary\"><tr><th>run</th><th>steps</th><th>last train loss</th>"
            + "<th>best val loss</th><th>last val loss</th><th>median tokens/s</th><th>elapsed</th></tr>\n"
        for run in runs {
            let lastStep = max(run.train.last?.step ?? 0, run.eval.last?.step ?? 0)
            let best = run.eval.filter { $0.valLoss.isFinite }.min { $0.valLoss < $1.valLoss }
            let speeds = run.train.map(\.tokensPerSecond).filter(\.isFinite).sorted()
            let elapsed = max(run.train.last?.elapsedSeconds ?? 0, run.eval.last?.elapsedSeconds ?? 0)
            let cells = [
                run.name,
                String(lastStep),
                run.train.last.map { Format.label($0.loss, significant: 4) } ?? "–",
                best.map { Format.label($0.valLoss, significant: 4) + " (step \($0.step))" } ?? "–",
                run.eval.last.map { Format.label($0.valLoss, significant: 4) } ?? "–",
                speeds.isEmpty ? "–" : Format.label(speeds[speeds.count / 2]),
                Format.spokenDuration(elapsed),
            ]
            out += "<tr>" + cells.map { "<td>\(escapeHTML($0))</td>" }.joined() + "</tr>\n"
        }
        return out + "</table>\n"
    }

    static func page(title: String, body: String) -> String {
        """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>\(escapeHTML(title))</title>
        <style>
        body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
               max-width: 860px; margin: 24px auto; padding: 0 16px; line-height: 1.4; }
        h1 { font-size: 22px; margin: 0 0 2px; } h2 { font-size: 17px; margin: 28px 0 4px; }
        h3 { font-size: 14px; margin: 14px 0 2px; color: #444; }
        .sub, .note { color: #666; font-size: 13px; margin: 2px 0 6px; }
        figure { margin: 0; }
        table { border-collapse: collapse; font-size: 13px; margin: 10px 0; }
        th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }
        th { background: #f4f4f4; }
        details { margin: 8px 0; font-size: 13px; }
        svg.chart { width: 100%; height: auto; display: block; font-size: 11px; }
        svg .plot { fill: #fcfcfc; stroke: #999; }
        svg .frame { fill: none; stroke: #777; }
        svg .grid { stroke: #e6e6e6; }
        svg .tickmark { stroke: #777; }
        svg .tick { fill: #555; }
        svg .axis-label { fill: #333; font-size: 12px; }
        svg .legend text { fill: #333; font-size: 12px; }
        svg .empty { fill: #999; font-size: 14px; }
        </style></head><body>
        \(body)
        </body></html>

        """
    }
}

/// The metrics of one run, cleaned for plotting.
struct RunData {
    var directory: String
    var name: String
    /// Flattened configuration from state.json, in file order.
    var config: [(String, String)]
    var train: [TrainRecord]
    var eval: [EvalRecord]

    /// MoE layer indices present in any train record, ascending.
    var moeLayers: [Int] {
        Array(Set(train.flatMap { $0.moe?.map(\.layer) ?? [] })).sorted()
    }

    static func load(directory: String) throws -> RunData {
        let records = try MetricsLog.read(path: directory + "/metrics.jsonl")
        var name = AtomicFile.splitPath(directory).base
        var config: [(String, String)] = []
        let statePath = directory + "/state.json"
        if FileSystem.exists(statePath) {
            let bytes = try FileSystem.readFile(statePath)
            let state: JSONValue
            do {
                state = try JSONValue.parse(bytes)
            } catch {
                throw MetricsError(description: "\(statePath): not valid JSON (\(error.description)); "
                    + "the run state is damaged — restore it from the checkpoint or delete it to report without it")
            }
            if let runName = state["name"]?.stringValue, !runName.isEmpty { name = runName }
            if let members = (state["config"] ?? state).members {
                config = flatten(members, prefix: "")
            }
        }
        // A resumed run appends records for steps it logged before the crash; the later ones describe
        // the run that continued, so each step keeps its last record.
        var trainByStep: [Int: TrainRecord] = [:], evalByStep: [Int: EvalRecord] = [:]
        for record in records {
            switch record {
            case .train(let r): trainByStep[r.step] = r
            case .eval(let r): evalByStep[r.step] = r
            }
        }
        return RunData(directory: directory, name: name, config: config,
                       train: trainByStep.values.sorted { $0.step < $1.step },
                       eval: evalByStep.values.sorted { $0.step < $1.step })
    }

    /// Scalars of a JSON object as `a.b = value` rows; arrays shown compactly.
    static func flatten(_ members: [JSONMember], prefix: String) -> [(String, String)] {
        members.flatMap { member -> [(String, String)] in
            let key = prefix + member.key
            switch member.value {
            case .object(let inner): return flatten(inner, prefix: key + ".")
            case .string(let s): return [(key, s)]
            default: return [(key, member.value.serialized())]
            }
        }
    }
}
