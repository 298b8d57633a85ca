import MoE
import NN
import Tensors

/// Everything that defines a training run: model shape, optimisation, data, MoE layers, output.
///
/// Built in three layers, each overriding the one before: a preset (`tiny` unless one is named), an
/// optional config file (`--config run.toml` or `.json`), then the command-line flags. Keys are the
/// flag names without the leading `--`; `-` and `_` are interchangeable (`d-model` = `d_model`).
/// ```swift
/// var config = try RunConfig.resolve(preset: "tiny", configFile: "run.toml",
///                                    overrides: ["experts": .int(4), "steps": .int(200)])
/// try config.validate()
/// ```
public struct RunConfig: Equatable, Sendable {
    // Model
    /// The preset the run started from (`tiny`, `small`, `medium`).
    public var preset: String
    /// A name for the run (the report's title); nil = the output directory's name.
    public var name: String?
    public var layers: Int
    public var dModel: Int
    public var heads: Int
    /// Tokens per training window (and the model's context length).
    public var seqLen: Int
    /// Width of the dense MLPs; nil = 4·dModel.
    public var mlpHidden: Int?
    public var dropout: Double

    // Optimisation
    public var batchSize: Int
    public var steps: Int
    /// Peak learning rate (after warm-up); cosine decay to 10% of it at the last step.
    public var lr: Double
    /// Linear warm-up steps (cut to `steps` when longer).
    public var warmup: Int
    public var weightDecay: Double
    /// Global gradient-norm clip; 0 = off.
    public var clip: Double
    public var seed: UInt64

    // Where and how
    /// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
    public var device: String
    /// `fp32`, `bf16` (CUDA only: bfloat16 activations, float32 master weights) or `tf32` (float32 with
    /// TF32 tensor-core GEMMs on CUDA; the same as fp32 on the CPU): `precisionNames`.
    public var precision: String

    // Evaluation, logging, checkpoints
    /// Evaluate every this many steps (and at the end); 0 = only at the end.
    public var evalEvery: Int
    /// Fixed validation batches per evaluation.
    public var evalBatches: Int
    /// Write a checkpoint every this many steps (and at the end); 0 = only at the end.
    public var checkpointEvery: Int
    /// Checkpoints kept in the output directory (oldest removed first); 0 = keep all.
    public var keepCheckpoints: Int
    /// A metrics record (and a progress line off a terminal) every this many steps.
    public var logEvery: Int

    // Data
    /// A text file to train on, or a directory or glob of them (`TextCorpus`); nil = the built-in synthetic corpus.
    public var data: String?
    /// The fraction at the end of the data held out for validation.
    public var valFraction: Double
    /// Size of the synthetic corpus when no `data` is given.
    public var corpusBytes: Int

    /// The output directory; nil = `runs/<name or timestamp>`.
    public var out: String?

    // Mixture of experts (0 experts = a dense model)
    public var experts: Int
    /// Experts per token; nil = the gate's own (1 for switch, 2 otherwise).
    public var topK: Int?
    /// A row of the gate table: `topk`, `noisy`, `gshard`, `switch`, `expert-choice`, `zero`.
    public var gate: String
    /// Every this many blocks get an MoE MLP (block i with i % moeEvery == 0).
    public var moeEvery: Int
    /// Each expert's hidden width; nil = mlpHidden / topK (the dense model's FLOPs per token).
    public var expertHidden: Int?
    /// Training capacity factor of the gshard and switch gates (evaluation uses twice it; nil = 1.2),
    /// or expert choice's `cf` (tokens per expert `cf·T/N`; nil = 2).
    public var capacityFactor: Double?
    /// Weight of the mean load-balancing loss over MoE layers.
    public var balanceWeight: Double
    /// Weight of the router z-loss (ST-MoE); 0 = off.
    public var zLossWeight: Double
    /// A dense checkpoint whose weights seed the model before its MLPs become experts (upcycling).
    public var initFrom: String?
    /// `aux`, `bias` or `none` (`RoutingBalance`); nil = the gate's own balance, or
    /// `RunConfig.defaultBalance` for a gate that would not balance itself (topk).
    public var balance: String?
    /// `γ` of `balance bias`: each step `b_e += γ · sign(mean load − load_e)`.
    public var biasUpdateRate: Double
    /// `softmax` or `sigmoid` (`RouterScore`): what the top-k gate's combine weights come from.
    public var score: String
    /// Weight of DeepSeek-V3's sequence-wise balance loss (mean over layers); 0 = off.
    public var seqBalanceWeight: Double
    /// Dense shared experts per MoE layer (every token passes through them), each as wide as a routed expert.
    public var sharedExperts: Int

    // Expert parallelism (docs/distributed.md, "Expert parallelism")
    /// `W_ep`: ranks each MoE layer's experts are spread over (consecutive ranks form a group; the
    /// `W / W_ep` groups are replicas); nil = the world size for an MoE run, 1 = experts replicated.
    public var expertParallel: Int? = nil
    /// `mean` (MOE_SEMANTICS §3: the one-rank gradient of the concatenated batch) or `sum`
    /// (FastMoE's: the expert gradient summed over the expert-parallel group, `W_ep` times larger).
    public var expertGradient: String = "mean"
    /// `global` (balance losses count the whole global batch: layout-invariant) or `local` (each
    /// rank's tokens, GShard's and FastMoE's per-rank form).
    public var balanceStatistics: String = "global"

    /// The sizes of a preset; every other setting has the same default in all presets.
    public static func preset(_ name: String) throws -> RunConfig {
        var c = RunConfig.tiny
        switch name {
        case "tiny": break
        case "small":
            (c.layers, c.dModel, c.heads, c.seqLen, c.batchSize) = (6, 256, 8, 128, 32)
            (c.steps, c.lr, c.warmup, c.evalEvery, c.checkpointEvery) = (2000, 1e-3, 100, 250, 1000)
            c.corpusBytes = 8_000_000
        case "medium":
            (c.layers, c.dModel, c.heads, c.seqLen, c.batchSize) = (12, 512, 8, 256, 32)
            (c.steps, c.lr, c.warmup, c.evalEvery, c.checkpointEvery) = (5000, 6e-4, 200, 500, 1000)
            c.corpusBytes = 32_000_000
        default:
            throw RunConfigError("preset '\(name)' is not one of \(presetNames.joined(separator: ", "))")
        }
        c.preset = name
        return c
    }

    /// The presets, smallest first.
    public static let presetNames = ["tiny", "small", "medium"]

    /// The default run: finishes in about two minutes on 2 CPU cores in a release build and learns
    /// the synthetic corpus well below its unigram entropy (docs/benchmarks.md, "CPU training").
    static let tiny = RunConfig(
        preset: "tiny", name: nil, layers: 4, dModel: 128, heads: 4, seqLen: 64, mlpHidden: nil, dropout: 0,
        batchSize: 16, steps: 500, lr: 2e-3, warmup: 40, weightDecay: 0.1, clip: 1, seed: 1337,
        device: "auto", precision: "fp32",
        evalEvery: 100, evalBatches: 8, checkpointEvery: 250, keepCheckpoints: 2, logEvery: 10,
        data: nil, valFraction: 0.05, corpusBytes: 2_000_000, out: nil,
        experts: 0, topK: nil, gate: "topk", moeEvery: 1, expertHidden: nil, capacityFactor: nil,
        balanceWeight: 0.01, zLossWeight: 0, initFrom: nil,
        balance: nil, biasUpdateRate: RouterBias.defaultUpdateRate, score: "softmax", seqBalanceWeight: 0, sharedExperts: 0)

    /// The trainer's balance for a gate that would otherwise not balance itself (the topk gate):
    /// chosen by the comparison in docs/benchmarks.md ("Routing balance"). `--balance none` gives
    /// FastMoE's exact top-k gate back.
    public static let defaultBalance = RoutingBalance.bias

    /// The gate names `gate` accepts: the gate table's (`GateSpec.all`).
    public static var gateNames: [String] { GateSpec.all.map(\.name) }

    // MARK: Derived values

    /// The GPT shape of this run.
    public var gptConfig: GPTConfig {
        GPTConfig(vocabSize: ByteTokenizer.vocabularySize, contextLength: seqLen, layers: layers, dModel: dModel,
                  heads: heads, mlpHidden: mlpHidden ?? 4 * dModel, dropout: dropout)
    }

    /// Whether the model has MoE layers.
    public var isMoE: Bool { experts > 0 }

    /// `W_ep` for a run over `worldSize` ranks: `expertParallel`, or the world size for an MoE run
    /// (1 for a dense one). Checked by `ExpertLayout`.
    public func effectiveExpertParallel(worldSize: Int) -> Int {
        guard isMoE else { return 1 }
        return expertParallel ?? worldSize
    }

    /// `topK`, or the gate's own when unset (expert choice: `round(cf)`, its mean experts per token).
    public var effectiveTopK: Int {
        if let spec = gateSpec, !spec.tokenChoice { return max(1, min(experts, Int(gateCapacityFactor.training.rounded()))) }
        return topK ?? gateSpec?.fixedTopK ?? 2
    }

    /// The balance the MoE layers use: `balance`, else the gate's default, else (for a gate whose
    /// default is `none` but which can balance) `RunConfig.defaultBalance`. Nil for an unknown name.
    public var effectiveBalance: RoutingBalance? {
        if let balance { return RoutingBalance(rawValue: balance) }
        guard let spec = gateSpec else { return nil }
        return spec.defaultBalance == .none && spec.balances.contains(Self.defaultBalance) ? Self.defaultBalance : spec.defaultBalance
    }

    /// The activation dtype `precision` asks for: bfloat16, or nil (the float32 of the parameters).
    public var activationDType: DType? { precision == "bf16" ? .bfloat16 : nil }

    /// The gate table's row for `gate`, or nil for an unknown name (`validate()` refuses it).
    public var gateSpec: GateSpec? { GateSpec.named(gate) }

    /// The capacity factors of a gate with a capacity. Evaluation uses twice the training factor, as
    /// GShard and Switch do (1.2 and 2.4 by default).
    public var gateCapacityFactor: CapacityFactor {
        let cf = capacityFactor ?? gateSpec?.defaultCapacityFactor ?? 1.2
        return CapacityFactor(training: cf, eval: 2 * cf)
    }

    /// The device `device` names, checked to exist.
    public func resolveDevice() throws -> Device {
        if device == "auto" { return Device.cudaAvailable ? .cuda(0) : .cpu }
        guard let d = Device(parsing: device) else {
            throw RunConfigError("--device '\(device)' is not one of cpu, cuda, cuda:N, auto")
        }
        if case .cuda(let index) = d {
            guard Device.cudaAvailable else {
                throw RunConfigError("--device \(device): no CUDA device is available on this machine "
                    + "(run `fastmoe info` to see why); use --device cpu")
            }
            guard index < Device.cudaDeviceCount else {
                throw RunConfigError("--device \(device): this machine has \(Device.cudaDeviceCount) CUDA device(s), "
                    + "numbered from 0; pick one of them")
            }
        }
        if precision == "bf16" && !d.isCUDA {
            throw RunConfigError("precision bf16 runs on CUDA only (bfloat16 is storage-only on the CPU); "
                + "use --precision fp32 on the CPU, or --device cuda")
        }
        return d
    }
}

/// A run configuration that cannot run; the message names the setting (as its flag) and the fix.
public struct RunConfigError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    /// `description` with its control characters escaped (``Swift/String/oneLine``): always one line.
    public init(_ description: String) { self.description = description.oneLine }
}
