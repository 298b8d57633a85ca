import ArgumentParser
import FastMoE

struct CompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Train a dense GPT and an MoE GPT of equal FLOPs per token on the same data, and compare them in one report.",
        discussion: """
        Both runs take the same settings (preset, config file, flags) and seed; the MoE run adds the MoE \
        flags (--experts, default 4; --top-k, --gate, …), with each expert mlp-hidden / top-k wide so a \
        token costs the FLOPs of the dense MLP. The runs go to OUT/dense and OUT/moe-<E>e, one after the \
        other; OUT/compare.html plots validation loss against steps and against wall-clock time. Both it and \
        the summary printed at the end give the equal-time reading: each run's validation loss when the faster \
        one finished (the other's read between its evaluations).
        """)

    @OptionGroup var options: RunOptions

    @Option(help: "A config file (.toml or .json) between the preset and the flags.")
    var config: String?

    @Flag(name: .customLong("cuda-graph"), help: "Train both runs with their steps replayed as CUDA graphs (--device cuda).")
    var cudaGraph = false

    func run() throws {
        let comparison = try Comparison.prepare(preset: options.preset, configFile: config, overrides: options.overrides())
        comparison.dense.cudaGraph = cudaGraph
        comparison.moe.cudaGraph = cudaGraph
        let console = ConsoleReporter()
        let (dense, moe, report, equalTime) = try comparison.run(onEvent: console.handle)
        let d = comparison.dense, m = comparison.moe
        print("")
        print("comparison (\(comparison.directory))")
        print(BenchRow.pad("run", 18) + BenchRow.pad("FLOPs/token", 14) + BenchRow.pad("parameters", 12)
            + BenchRow.pad("val loss", 10) + BenchRow.pad("wall time", 11) + "tokens/s")
        for (name, trainer, summary) in [("dense", d, dense), (m.config.name ?? "moe", m, moe)] {
            print(BenchRow.pad(name, 18) + BenchRow.pad(Format.fixed(trainer.model.flopsPerToken / 1e6, 2) + "M", 14)
                + BenchRow.pad(Format.fixed(Double(trainer.model.parameterCount) / 1e6, 2) + "M", 12)
                + BenchRow.pad(Format.fixed(summary.finalValLoss, 4), 10)
                + BenchRow.pad(Format.fixed(summary.elapsedSeconds, 1) + " s", 11) + Format.fixed(summary.tokensPerSecond, 0))
        }
        if let equalTime { print("equal time: \(equalTime.summary)") }
        print("report: \(report)")
    }
}
