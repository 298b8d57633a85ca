import Tensors

/// The FastMoE paper's experiment at any size: a dense GPT and an MoE GPT of (nearly) equal training
/// FLOPs per token, trained for the same steps on the same data with the same seed, then one report
/// of validation loss against steps and against wall-clock time (`fastmoe compare`).
///
/// Equal FLOPs come from `moefy`'s default expert width `mlpHidden / topK`: a token passes through
/// `k` experts of `1/k` the dense MLP's width. The MoE model adds only its gate and `k − 1` output biases.
/// ```swift
/// let comparison = try Comparison.prepare(overrides: ["experts": .int(4), "steps": .int(300), "out": .string("runs/cmp")])
/// let result = try comparison.run()
/// print(result.dense.finalValLoss, result.moe.finalValLoss, result.report)
/// ```
public struct Comparison {
    public let dense: Trainer
    public let moe: Trainer
    /// Holds `dense/`, `moe-<E>e/` and `compare.html`.
    public let directory: String

    /// Settings that describe only the MoE run; the dense run leaves them out.
    static let moeKeys: Set<String> = ["experts", "top_k", "gate", "moe_every", "expert_hidden", "capacity_factor",
                                       "balance_weight", "z_loss_weight", "init_from", "balance", "bias_update_rate", "score",
                                       "seq_balance_weight", "shared_experts"]

    /// Both runs, validated, nothing written. `overrides["experts"]` defaults to 4; `out` names the
    /// comparison directory (default `runs/compare-<time>`); `name` is not allowed (the runs are named
    /// `dense` and `moe-<E>e`).
    public static func prepare(preset: String? = nil, configFile: String? = nil,
                               overrides: [String: ConfigValue] = [:]) throws -> Comparison {
        var overrides = Dictionary(uniqueKeysWithValues: overrides.map { (RunConfig.canonicalKey($0.key), $0.value) })
        if overrides["name"] != nil {
            throw RunConfigError("--name is not used by compare: the runs are named dense and moe-<E>e inside --out")
        }
        if overrides["init_from"] != nil {
            throw RunConfigError("--init-from is not used by compare: both runs start from scratch with the same seed")
        }
        if overrides["experts"] == nil { overrides["experts"] = .int(4) }
        var moeConfig = try RunConfig.resolve(preset: preset, configFile: configFile, overrides: overrides)
        let directory = moeConfig.out ?? "runs/compare-" + Trainer.timestamp()
        guard moeConfig.experts >= 1 else {
            throw RunConfigError("--experts is \(moeConfig.experts); compare needs an MoE run (at least 1 expert)")
        }
        var denseConfig = moeConfig
        let plain = try RunConfig.preset(moeConfig.preset)
        (denseConfig.experts, denseConfig.topK, denseConfig.gate, denseConfig.moeEvery, denseConfig.expertHidden,
         denseConfig.capacityFactor, denseConfig.balanceWeight, denseConfig.zLossWeight) =
            (0, nil, plain.gate, 1, nil, nil, plain.balanceWeight, plain.zLossWeight)
        (denseConfig.balance, denseConfig.biasUpdateRate, denseConfig.score, denseConfig.seqBalanceWeight, denseConfig.sharedExperts) =
            (nil, plain.biasUpdateRate, plain.score, plain.seqBalanceWeight, plain.sharedExperts)
        denseConfig.out = directory + "/dense"
        denseConfig.name = "dense"
        moeConfig.name = "moe-\(moeConfig.experts)e-top\(moeConfig.effectiveTopK)"
        moeConfig.out = directory + "/moe-\(moeConfig.experts)e"
        let dense = try Trainer(config: denseConfig)
        let moe = try Trainer(config: moeConfig)
        return Comparison(dense: dense, moe: moe, directory: directory)
    }

    /// Trains the dense run, then the MoE run, then writes `compare.html` and each run's report;
    /// returns the page's equal-time reading with the summaries.
    public func run(onEvent: @escaping (TrainingEvent) -> Void = { _ in }) throws
        -> (dense: TrainingSummary, moe: TrainingSummary, report: String, equalTime: EqualTimeReading?) {
        dense.onEvent = onEvent
        moe.onEvent = onEvent
        // Kernels compile on their first use: done here, neither run's clock holds compilation that the
        // other was spared.
        if let cuda = Backends.backend(for: dense.device) as? CUDABackend {
            cuda.compileModules(for: dense.config.activationDType ?? .float32)
        }
        let denseSummary = try dense.run()
        let moeSummary = try moe.run()
        let report = directory + "/compare.html"
        try ReportWriter.writeReport(runDirectory: dense.outputDirectory)
        try ReportWriter.writeReport(runDirectory: moe.outputDirectory)
        let equalTime = try ReportWriter.writeComparison(runDirectories: [dense.outputDirectory, moe.outputDirectory], output: report)
        return (denseSummary, moeSummary, report, equalTime)
    }
}
