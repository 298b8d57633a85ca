import Tensors

/// What a `Trainer` tells its observer (`Trainer.onEvent`); `ConsoleReporter` prints them.
public enum TrainingEvent: Sendable {
    case started(TrainingStart)
    /// After every step (the console decides how often to show one).
    case step(StepProgress)
    case evaluated(step: Int, valLoss: Double)
    case checkpointSaved(step: Int, path: String)
    case finished(TrainingSummary)
}

/// The facts of a run, known before its first step.
public struct TrainingStart: Sendable {
    public var config: RunConfig
    public var device: Device
    public var outputDirectory: String
    public var parameterCount: Int
    /// Training FLOPs per token (forward + backward), counting only the active experts.
    public var flopsPerToken: Double
    /// Names of the MoE layers (`blocks.0.mlp`, …); empty for a dense model.
    public var moeLayers: [String]
    public var dataSource: String
    public var trainTokens: Int
    public var validationTokens: Int
    /// Unigram entropy of the validation text (nats/token): the loss of the best context-free model.
    public var unigramEntropy: Double
    /// The step the run starts at (0, or the checkpoint's when resuming).
    public var startStep: Int
    /// The checkpoint resumed from, or the dense checkpoint upcycled from.
    public var resumedFrom: String?
    public var upcycledFrom: String?
    /// What was adjusted or cleaned up before the first step (an evaluation capped to the data,
    /// temporary files of a writer that died, metrics past the checkpoint dropped).
    public var notes: [String] = []
    /// Data-parallel ranks: the global batch is `worldSize · config.batchSize` windows.
    public var worldSize = 1
}

/// One finished step.
public struct StepProgress: Sendable {
    /// Completed steps.
    public var step: Int
    public var totalSteps: Int
    /// The language-model loss of this step (without the balance loss).
    public var loss: Double
    /// Throughput, smoothed over the last steps.
    public var tokensPerSecond: Double
    public var lr: Double
    /// Training seconds so far (over every resumption).
    public var elapsedSeconds: Double
    /// Estimated seconds to the last step.
    public var etaSeconds: Double
    /// Per MoE layer, the busiest expert's routed tokens over the mean, since the last log line
    /// (1 = perfectly balanced); empty for dense models.
    public var balance: [Double]
    /// Whether this step closes a logging interval (a metrics record was written).
    public var isLogStep: Bool
    /// The mean loss over the logging interval, on log steps.
    public var intervalLoss: Double?
    /// Per MoE layer with a routing bias (`--balance bias`), the largest `|b_e|`, at log steps.
    public var biasMagnitude: [Double] = []
    /// A warning to show with the progress (a layer's routing collapsed, and the flag that fixes it).
    public var warning: String?
}

/// The end of a run.
public struct TrainingSummary: Sendable {
    public var steps: Int
    public var finalValLoss: Double
    public var unigramEntropy: Double
    public var elapsedSeconds: Double
    /// Mean training throughput of this process's steps.
    public var tokensPerSecond: Double
    public var outputDirectory: String
    /// The last checkpoint written.
    public var checkpoint: String?
    /// Steps whose gradient norm (or, with `skipNonFinite`, loss) was not finite and were skipped.
    public var skippedSteps: Int
    /// Whether the run stopped early because `Trainer.shouldStop` asked (Ctrl-C).
    public var interrupted: Bool = false
    /// The step count the run was configured for.
    public var totalSteps: Int = 0

    /// Validation perplexity, `exp(loss)`.
    public var perplexity: Double { expDouble(finalValLoss) }
}
