import Distributed
import MoE
import NN
import Tensors

/// Builds the model a `RunConfig` describes.
///
/// The same config and seed always build the same modules with the same parameter names and initial
/// values, which is what lets a checkpoint be loaded into a freshly built model.
/// ```swift
/// let model = ModelFactory.build(config, device: .cpu)
/// print(model.parameterCount, model.flopsPerToken)
/// ```
public enum ModelFactory {
    /// The GPT of `config` on `device` (float32 master parameters; `activationDType` from `precision`),
    /// with MoE MLPs when `config.experts > 0`. An upcycled run (`initFrom`) gets experts as wide as
    /// the dense MLP, randomly initialised here: `upcycle` fills them from the dense checkpoint.
    ///
    /// With an expert layout (`experts:`), the whole model is built first, exactly as one rank would
    /// build it from the seed, and then each MoE layer keeps this rank's slice of experts
    /// (`shardExperts`): the starting weights do not depend on the layout. The full experts are held
    /// only while building, which is fine at the sizes we train.
    public static func build(_ config: RunConfig, device: Device, experts layout: ExpertLayout? = nil) -> GPT {
        var generator = RandomGenerator(seed: config.seed)
        let model = GPT(config.gptConfig, device: device, generator: &generator)
        model.activationDType = config.activationDType
        if config.isMoE {
            let hidden = config.initFrom != nil ? config.gptConfig.mlpHidden : config.expertHidden
            moefy(model, expertCount: config.experts, topK: config.effectiveTopK, gate: config.gateSpec ?? .topK,
                  every: config.moeEvery, expertHidden: hidden, copy: false, balanceWeight: config.balanceWeight,
                  zLossWeight: config.zLossWeight, capacityFactor: config.gateCapacityFactor, balance: config.effectiveBalance,
                  biasUpdateRate: config.biasUpdateRate, score: RouterScore(rawValue: config.score) ?? .softmax,
                  sequenceBalanceWeight: config.seqBalanceWeight, sharedExperts: config.sharedExperts,
                  sharedHidden: config.expertHidden ?? defaultExpertHidden(denseHidden: config.gptConfig.mlpHidden, topK: config.effectiveTopK),
                  generator: &generator)
            if let layout { shardExperts(model, over: layout.expertParallel) }
        }
        return model
    }

    /// Sparse upcycling (`--init-from`): the dense model of `config` loaded from `denseCheckpoint`,
    /// then its MLPs turned into experts that each start as a copy of the dense MLP.
    /// With an expert layout each rank keeps its slice of the upcycled experts (all copies of the
    /// dense MLP, so every slice starts alike).
    public static func upcycle(_ config: RunConfig, from denseCheckpoint: String, device: Device,
                               experts layout: ExpertLayout? = nil) throws -> GPT {
        let directory = try Checkpoint.resolve(denseCheckpoint)
        let saved = try Checkpoint.readState(directory)
        guard !saved.config.isMoE else {
            throw CheckpointError("--init-from \(denseCheckpoint): the checkpoint is an MoE model (\(saved.config.experts) experts); "
                + "upcycling starts from a dense run (trained with --experts 0)")
        }
        var dense = config
        (dense.experts, dense.topK, dense.gate, dense.moeEvery, dense.expertHidden, dense.capacityFactor, dense.initFrom) =
            (0, nil, "topk", 1, nil, nil, nil)
        (dense.balance, dense.score, dense.sharedExperts) = (nil, "softmax", 0)
        if let difference = RunConfig.architectureDifference(saved: saved.config, expected: dense) {
            throw CheckpointError("--init-from \(denseCheckpoint): the dense checkpoint's model differs from this run's: "
                + "\(difference) (checkpoint vs this run); "
                + "give this run the same model flags (or --preset) as the dense run")
        }
        var generator = RandomGenerator(seed: config.seed)
        let model = GPT(config.gptConfig, device: device, generator: &generator)
        model.activationDType = config.activationDType
        try Checkpoint.loadModel(model, from: directory, savedConfig: saved.config, expectedConfig: dense)
        moefy(model, expertCount: config.experts, topK: config.effectiveTopK, gate: config.gateSpec ?? .topK, every: config.moeEvery,
              copy: true, balanceWeight: config.balanceWeight, zLossWeight: config.zLossWeight,
              capacityFactor: config.gateCapacityFactor, balance: config.effectiveBalance, biasUpdateRate: config.biasUpdateRate,
              score: RouterScore(rawValue: config.score) ?? .softmax, sequenceBalanceWeight: config.seqBalanceWeight,
              sharedExperts: config.sharedExperts, generator: &generator)
        if let layout { shardExperts(model, over: layout.expertParallel) }
        return model
    }
}

extension ModelFactory {
    /// The model saved at `path` (a run directory or a checkpoint), with its weights, for evaluation
    /// or sampling on `device`. A model trained in bf16 runs in float32 on the CPU.
    public static func load(checkpoint path: String, device: Device) throws -> (model: GPT, state: TrainingState, directory: String) {
        let directory = try Checkpoint.resolve(path)
        let state = try Checkpoint.readState(directory)
        let file = try Checkpoint.readModelFile(directory)
        let modelPath = directory + "/" + Checkpoint.modelFile
        try Checkpoint.checkSavedConfig(state.config, against: file, path: modelPath, statePath: directory + "/" + Checkpoint.stateFile)
        try MemoryEstimate(state.config, purpose: .loadingModel).check(on: device)
        let model = build(state.config, device: device)
        if !device.isCUDA { model.activationDType = nil }
        try Checkpoint.loadModel(model, from: file, path: modelPath, savedConfig: state.config, expectedConfig: state.config)
        return (model, state, directory)
    }
}
