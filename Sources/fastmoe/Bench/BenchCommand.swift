import ArgumentParser
import FastMoE

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure speed: a table for people, JSON lines for tools, with the ceilings of the same run.",
        subcommands: [OpsBench.self, TrainBench.self, CollectivesBench.self, MoELayerBench.self])
}

struct OpsBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ops",
        abstract: "GEMM throughput, elementwise/row-wise bandwidth and the embedding gradient next to the copy bandwidth of the same device.")

    @Option(help: "cpu, cuda, cuda:N or auto (CUDA when available).")
    var device: String = "auto"

    @Option(help: "Elements per tensor for the bandwidth tests (default: 64 Mi on CUDA = 256 MB, 16 Mi on the CPU).")
    var elements: Int?

    @Option(help: "Timed repetitions per measurement (the median is reported).")
    var repeats: Int = 10

    func validate() throws {
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1") }
        if let elements, elements < 1024 { throw ValidationError("--elements must be at least 1024") }
    }

    func run() throws {
        let dev = try DeviceChoice.resolve(device)
        let n = elements ?? (dev.isCUDA ? 64 << 20 : 16 << 20)
        var rows: [BenchRow] = []
        rows += OpsBenchmarks.gemm(device: dev, repeats: repeats)
        rows += OpsBenchmarks.bandwidth(device: dev, elements: n, repeats: repeats)
        BenchRow.printTable(rows, title: "fastmoe bench ops on \(dev) (\(DeviceChoice.describe(dev)))")
    }
}
