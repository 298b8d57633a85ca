import ArgumentParser
import FastMoE

@main
struct FastMoECommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fastmoe",
        abstract: "FastMoE in Swift: train Mixture-of-Experts language models on CPUs and NVIDIA GPUs.",
        version: FastMoEVersion.string,
        subcommands: [InfoCommand.self, BenchCommand.self])
}
