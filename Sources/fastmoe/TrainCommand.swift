import ArgumentParser
import FastMoE

/// The run settings as flags. Every flag is optional: an unset flag leaves the value of the config
/// file, or else of the preset. Each maps to the `RunConfig` key of the same name (dashes → `_`).
///
/// Numeric flags take the next word as their value even when it starts with '-', so `--steps -1`
/// is read as -1 and refused by validation with a message, instead of "Missing value".
struct RunOptions: ParsableArguments {
    @Option(help: "Sizes to start from: tiny (default; ~2 min on 2 CPU cores), small, medium.")
    var preset: String?
    @Option(help: "A name for the run (report title; default output directory runs/<name>).")
    var name: String?

    @Option(parsing: .unconditional, help: "Transformer blocks.") var layers: Int?
    @Option(name: .customLong("d-model"), parsing: .unconditional, help: "Model width.") var dModel: Int?
    @Option(parsing: .unconditional, help: "Attention heads (must divide --d-model).") var heads: Int?
    @Option(name: .customLong("seq-len"), parsing: .unconditional, help: "Tokens per training window (the context length).") var seqLen: Int?
    @Option(name: .customLong("mlp-hidden"), parsing: .unconditional, help: "Dense MLP width (default 4 × d-model).") var mlpHidden: Int?
    @Option(parsing: .unconditional, help: "Dropout probability.") var dropout: Double?

    @Option(name: .customLong("batch-size"), parsing: .unconditional, help: "Windows per step.") var batchSize: Int?
    @Option(parsing: .unconditional, help: "Optimizer steps.") var steps: Int?
    @Option(parsing: .unconditional, help: "Peak learning rate (AdamW; cosine decay to 10%).") var lr: Double?
    @Option(parsing: .unconditional, help: "Linear warm-up steps.") var warmup: Int?
    @Option(name: .customLong("weight-decay"), parsing: .unconditional, help: "AdamW weight decay (matrices only).") var weightDecay: Double?
    @Option(parsing: .unconditional, help: "Gradient-norm clip (0 = off).") var clip: Double?
    @Option(parsing: .unconditional, help: "Seed of the initial weights, data order, dropout and gate noise.") var seed: UInt64?

    @Option(help: "cpu, cuda, cuda:N or auto (CUDA when available).") var device: String?
    @Option(help: "fp32; bf16 (CUDA only: bfloat16 activations, float32 master weights); tf32 (float32 with TF32 tensor-core GEMMs on CUDA; plain fp32 on the CPU).") var precision: String?

    @Option(name: .customLong("eval-every"), parsing: .unconditional, help: "Evaluate every N steps (0 = only at the end).") var evalEvery: Int?
    @Option(name: .customLong("eval-batches"), parsing: .unconditional, help: "Fixed validation batches per evaluation.") var evalBatches: Int?
    @Option(name: .customLong("checkpoint-every"), parsing: .unconditional, help: "Checkpoint every N steps (0 = only at the end).") var checkpointEvery: Int?
    @Option(name: .customLong("keep-checkpoints"), parsing: .unconditional, help: "Checkpoints kept (0 = all).") var keepCheckpoints: Int?
    @Option(name: .customLong("log-every"), parsing: .unconditional, help: "A metrics record every N steps.") var logEvery: Int?
    @Option(help: "Output directory (default runs/<name or timestamp>).") var out: String?

    @Option(help: "A text file to train on, or a directory or quoted glob of text files ('/usr/lib/python3*/**/*.py'), joined in sorted path order (default: the built-in synthetic corpus).") var data: String?
    @Option(name: .customLong("val-fraction"), parsing: .unconditional, help: "Fraction at the end of the data held out for validation.") var valFraction: Double?
    @Option(name: .customLong("corpus-bytes"), parsing: .unconditional, help: "Size of the synthetic corpus.") var corpusBytes: Int?

    @Option(parsing: .unconditional, help: "Experts per MoE layer (0 = dense).") var experts: Int?
    @Option(name: .customLong("top-k"), parsing: .unconditional, help: "Experts per token (default 2, or the gate's own k).") var topK: Int?
    @Option(help: ArgumentHelp(GateSpec.helpText)) var gate: String?
    @Option(name: .customLong("moe-every"), parsing: .unconditional, help: "Every M-th block gets an MoE MLP (1 = all).") var moeEvery: Int?
    @Option(name: .customLong("expert-hidden"), parsing: .unconditional, help: "Expert hidden width (default mlp-hidden / top-k: equal FLOPs).") var expertHidden: Int?
    @Option(name: .customLong("capacity-factor"), parsing: .unconditional, help: "gshard/switch training capacity factor (eval: twice it; default 1.2); expert-choice: tokens per expert cf·T/N (default 2).") var capacityFactor: Double?
    @Option(help: ArgumentHelp("How token-choice gates balance their experts: bias (auxiliary-loss-free routing bias, DeepSeek-V3), aux (the balance loss, weighted by --balance-weight) or none. Default: the gate's own loss for noisy, gshard and switch; \(RunConfig.defaultBalance.rawValue) for topk. --gate topk --balance none is FastMoE's exact gate (it can collapse onto a few experts)."))
    var balance: String?
    @Option(name: .customLong("bias-update-rate"), parsing: .unconditional, help: "--balance bias: after each step b_e += rate · sign(mean load − load_e) (default 0.001).") var biasUpdateRate: Double?
    @Option(help: "topk gate's combine weights: softmax (default) over the k, or sigmoid normalised over the k (DeepSeek-V3).") var score: String?
    @Option(name: .customLong("seq-balance-weight"), parsing: .unconditional, help: "Weight of DeepSeek-V3's sequence-wise balance loss (mean over layers; 0 = off; e.g. 0.0001).") var seqBalanceWeight: Double?
    @Option(name: .customLong("shared-experts"), parsing: .unconditional, help: "Dense shared experts per MoE layer that every token passes through, each as wide as a routed expert (default 0).") var sharedExperts: Int?
    @Option(name: .customLong("balance-weight"), parsing: .unconditional, help: "Weight of the load-balancing loss (mean over layers) with --balance aux.") var balanceWeight: Double?
    @Option(name: .customLong("z-loss-weight"), parsing: .unconditional, help: "Weight of the router z-loss (0 = off).") var zLossWeight: Double?
    @Option(name: .customLong("init-from"), help: "Upcycle: start every expert from this dense run's MLP weights.") var initFrom: String?
    @Option(name: .customLong("expert-parallel"), parsing: .unconditional, help: "Under a launcher: spread each MoE layer's experts over groups of this many consecutive ranks (must divide --experts and the ranks; default: all ranks; 1 = every rank holds every expert).") var expertParallel: Int?
    @Option(name: .customLong("expert-gradient"), help: "Expert-parallel runs: mean (default: exactly the one-rank gradient of the global batch) or sum (FastMoE's: summed over the expert-parallel group).") var expertGradient: String?
    @Option(name: .customLong("balance-statistics"), help: "Runs on several ranks: global (default: balance losses count the whole global batch, as one rank would) or local (each rank's tokens, GShard's and FastMoE's form).") var balanceStatistics: String?

    /// The flags that were given, as `RunConfig` keys (the preset is passed separately).
    func overrides() -> [String: ConfigValue] {
        var v: [String: ConfigValue] = [:]
        func put(_ key: String, _ x: Int?) { if let x { v[key] = .int(x) } }
        func put(_ key: String, _ x: Double?) { if let x { v[key] = .double(x) } }
        func put(_ key: String, _ x: String?) { if let x { v[key] = .string(x) } }
        put("name", name)
        put("layers", layers); put("d_model", dModel); put("heads", heads); put("seq_len", seqLen)
        put("mlp_hidden", mlpHidden); put("dropout", dropout)
        put("batch_size", batchSize); put("steps", steps); put("lr", lr); put("warmup", warmup)
        put("weight_decay", weightDecay); put("clip", clip)
        if let seed { v["seed"] = .string(String(seed)) }
        put("device", device); put("precision", precision)
        put("eval_every", evalEvery); put("eval_batches", evalBatches); put("checkpoint_every", checkpointEvery)
        put("keep_checkpoints", keepCheckpoints); put("log_every", logEvery); put("out", out)
        put("data", data); put("val_fraction", valFraction); put("corpus_bytes", corpusBytes)
        put("experts", experts); put("top_k", topK); put("gate", gate); put("moe_every", moeEvery)
        put("expert_hidden", expertHidden); put("capacity_factor", capacityFactor); put("balance_weight", balanceWeight)
        put("z_loss_weight", zLossWeight); put("init_from", initFrom)
        put("balance", balance); put("bias_update_rate", biasUpdateRate); put("score", score)
        put("seq_balance_weight", seqBalanceWeight); put("shared_experts", sharedExperts)
        put("expert_parallel", expertParallel); put("expert_gradient", expertGradient); put("balance_statistics", balanceStatistics)
        return v
    }
}

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a GPT language model (dense or mixture-of-experts) and write metrics and checkpoints.",
        discussion: """
        Settings come from a preset (--preset, default tiny), then a config file (--config run.toml or \
        run.json; keys are the flag names without '--', with '-' or '_'), then the flags. Without --data \
        the model trains on the built-in synthetic corpus. The output directory gets metrics.jsonl, \
        metrics.csv, checkpoint-STEP/ directories and a 'latest' pointer; `fastmoe report DIR` draws it. \
        Started by a launcher (`fastmoe launch`, mpirun, srun) every rank trains data-parallel on \
        --batch-size windows of a global batch, and rank 0 prints and writes (docs/distributed.md).
        """)

    @OptionGroup var options: RunOptions

    @Option(help: "A config file (.toml or .json) between the preset and the flags.")
    var config: String?

    @Option(help: "Continue the run in this directory (or from this checkpoint) exactly where it stopped.")
    var resume: String?

    @Flag(help: "Start over in an --out directory that holds a run (its checkpoints and metrics are deleted).")
    var overwrite = false

    @Flag(inversion: .prefixedNo, help: "On Ctrl-C or SIGTERM, finish the step in flight and write a checkpoint before exiting.")
    var checkpointOnExit = true

    @Flag(name: .customLong("skip-nonfinite"), help: "Skip steps whose loss is NaN or infinite instead of stopping the run.")
    var skipNonFinite = false

    @Flag(name: .customLong("cuda-graph"),
          help: "Record the training step as a CUDA graph after two steps and replay it (one process, --device cuda).")
    var cudaGraph = false

    @Option(name: .customLong("bucket-mb"), parsing: .unconditional,
            help: "Data-parallel runs: largest gradient bucket in MiB (each bucket's all-reduce starts when backward has finished it).")
    var bucketMegabytes: Double = 25

    func validate() throws {
        guard bucketMegabytes > 0 && bucketMegabytes.isFinite else {
            throw ValidationError("--bucket-mb \(bucketMegabytes): a bucket must hold more than 0 MiB, e.g. --bucket-mb 25")
        }
    }

    func run() throws {
        // First, so that a Ctrl-C while the data loads is also a clean stop (before the first step).
        InterruptSignals.install()
        // Under a launcher (fastmoe launch, mpirun, srun) the ranks train data-parallel; alone, one rank.
        let trainer = try Trainer.prepare(preset: options.preset, configFile: config, overrides: options.overrides(),
                                          resume: resume, overwrite: overwrite,
                                          world: { device in try ProcessGroups.fromEnvironment(device: device) })
        trainer.bucketBytes = max(1, Int(bucketMegabytes * 1_048_576))
        let console = ConsoleReporter()
        trainer.onEvent = console.handle
        trainer.shouldStop = { InterruptSignals.received }
        trainer.checkpointOnExit = checkpointOnExit
        trainer.skipNonFinite = skipNonFinite
        trainer.cudaGraph = cudaGraph
        let summary = try trainer.run()
        if summary.interrupted {
            // The line says how to continue; the status says the run did not finish (docs/troubleshooting.md).
            throw ExitCode(InterruptSignals.exitStatus)
        }
    }
}
