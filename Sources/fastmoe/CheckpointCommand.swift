import ArgumentParser
import FastMoE

/// `fastmoe checkpoint merge`: the checkpoint of an expert-parallel run as one rank would have saved it.
struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Work with checkpoints.",
        subcommands: [Merge.self])

    struct Merge: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write an expert-parallel checkpoint as one consolidated checkpoint (one rank's files).",
            discussion: """
            An expert-parallel run saves its experts in shards (model-expert-rank-R.safetensors, one per \
            expert-parallel rank). This writes a checkpoint directory whose model.safetensors holds every \
            parameter under its global name, as a one-rank run saves it: `fastmoe eval`, `fastmoe generate` \
            and PyTorch's safetensors read it. (Every fastmoe command also reads the sharded checkpoint \
            itself, and a run resumes from it under another --expert-parallel.)
            """)

        @Argument(help: "A run directory (its latest checkpoint) or a checkpoint-STEP directory.")
        var checkpoint: String

        @Option(help: "The directory to write (default: merged-STEP beside the checkpoint).")
        var out: String?

        func run() throws {
            let (directory, target) = try Checkpoint.merge(checkpoint, to: out)
            print("merged \(directory) into \(target)")
        }
    }
}
