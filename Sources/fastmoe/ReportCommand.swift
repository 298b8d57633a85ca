import ArgumentParser
import FastMoE

struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Write report.html for a run (loss, learning rate, throughput, expert load), or compare several runs.",
        discussion: """
        One run directory: writes DIR/report.html. Several: writes one comparison page (validation loss \
        against steps and against wall-clock time) to --output. The pages are self-contained HTML with \
        inline SVG: open them in any browser, offline.
        """)

    @Argument(help: "Run directories (holding metrics.jsonl).")
    var runs: [String]

    @Option(help: "With several runs: the comparison page to write (default compare.html).")
    var output: String?

    func validate() throws {
        guard !runs.isEmpty else { throw ValidationError("name at least one run directory") }
        if output != nil && runs.count == 1 {
            throw ValidationError("--output is for comparing several runs; one run's report is always DIR/report.html")
        }
    }

    func run() throws {
        if runs.count == 1 {
            try ReportWriter.writeReport(runDirectory: runs[0])
            print(runs[0] + "/report.html")
        } else {
            let path = output ?? "compare.html"
            try ReportWriter.writeComparison(runDirectories: runs, output: path)
            print(path)
        }
    }
}
