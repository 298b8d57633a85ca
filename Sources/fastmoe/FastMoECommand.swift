import ArgumentParser
import FastMoE

@main
struct FastMoECommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fastmoe",
        abstract: "FastMoE in Swift: train Mixture-of-Experts language models on CPUs and NVIDIA GPUs.",
        version: FastMoEVersion.string,
        subcommands: [TrainCommand.self, GenerateCommand.self, EvalCommand.self, CheckpointCommand.self, ReportCommand.self, CompareCommand.self,
                      InfoCommand.self, BenchCommand.self, LaunchCommand.self, SelfTestCommand.self])

    static func main() {
        HostProfiler.startIfRequested()
        main(nil)
    }
}
