#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MoE
import NN
import Tensors

/// Training stopped for a reason outside the configuration (an output directory in the way, a
/// diverged loss); the message says what to do.
public struct TrainingError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Trains the GPT (optionally MoE) model of a `RunConfig`: AdamW with warm-up and cosine decay,
/// gradient clipping, the MoE balance loss, evaluation on fixed validation batches, metrics
/// (`OUT/metrics.jsonl`, `OUT/metrics.csv`) and checkpoints (`OUT/checkpoint-STEP`, `OUT/latest`).
///
/// Preparing a trainer validates everything (settings, device, data, checkpoints) and writes
/// nothing; `run()` creates the output directory. So a mistake leaves no trace on disk.
/// ```swift
/// let trainer = try Trainer.prepare(overrides: ["steps": .int(100), "out": .string("runs/demo")])
/// let console = ConsoleReporter()
/// trainer.onEvent = console.handle
/// let summary = try trainer.run()
/// print(summary.finalValLoss)
/// ```
public final class Trainer {
    public let config: RunConfig
    public let model: GPT
    public let optimizer: AdamW
    public let device: Device
    public let dataset: TokenDataset
    public let outputDirectory: String
    /// Completed steps.
    public private(set) var step: Int
    /// Receives the run's events (default: none); see `ConsoleReporter`.
    public var onEvent: (TrainingEvent) -> Void = { _ in }

    var sampler: BatchSampler
    let schedule: LearningRateSchedule
    let validation: [(Tensor, Tensor)]
    let fingerprint: DataFingerprint
    public let unigramEntropy: Double
    var elapsedBefore: Double
    public private(set) var lastValLoss: Double?
    let resumedFrom: String?
    let upcycledFrom: String?

    init(config: RunConfig, model: GPT, device: Device, dataset: TokenDataset, outputDirectory: String, step: Int,
         sampler: BatchSampler.State, elapsed: Double, valLoss: Double?, resumedFrom: String?, upcycledFrom: String?) {
        self.config = config
        self.model = model
        self.device = device
        self.dataset = dataset
        self.outputDirectory = outputDirectory
        self.step = step
        self.sampler = BatchSampler(tokens: dataset.train, state: sampler)
        self.elapsedBefore = elapsed
        self.lastValLoss = valLoss
        self.resumedFrom = resumedFrom
        self.upcycledFrom = upcycledFrom
        optimizer = AdamW(parameters: model.namedParameters().map { ($0.name, $0.parameter) },
                          learningRate: config.lr, weightDecay: config.weightDecay)
        schedule = LearningRateSchedule(peakLR: config.lr, warmupSteps: min(config.warmup, config.steps), totalSteps: config.steps)
        validation = dataset.validationBatches(batchSize: config.batchSize, seqLen: config.seqLen, count: config.evalBatches)
            .map { TrainingData.tensors($0, batchSize: config.batchSize, seqLen: config.seqLen, device: device) }
        fingerprint = DataFingerprint(dataset)
        unigramEntropy = TokenStatistics.unigramEntropy(of: dataset.validation)
    }

    // MARK: Preparing

    /// The trainer the command line asks for: a fresh run from `preset` → `configFile` → `overrides`,
    /// or, with `resume`, the run saved there continued (then only `Trainer.resumableKeys` may be
    /// overridden). Validates everything and writes nothing.
    public static func prepare(preset: String? = nil, configFile: String? = nil, overrides: [String: ConfigValue] = [:],
                               resume: String? = nil) throws -> Trainer {
        if let resume {
            if preset != nil || configFile != nil {
                throw RunConfigError("--resume continues a run with the settings saved in its checkpoint; drop "
                    + [preset != nil ? "--preset" : nil, configFile != nil ? "--config" : nil].compactMap { $0 }.joined(separator: " and "))
            }
            return try Trainer.resume(from: resume, overrides: overrides)
        }
        return try Trainer(config: try RunConfig.resolve(preset: preset, configFile: configFile, overrides: overrides))
    }

    /// A fresh run of `config` (validated here). Its output directory (`config.out`, or
    /// `runs/<name or time>`) must not hold a run already.
    public convenience init(config original: RunConfig) throws {
        try original.validate()
        var config = original
        let device = try config.resolveDevice()
        let out = config.out ?? "runs/" + (config.name ?? Trainer.timestamp())
        try Trainer.checkFreshOutput(out)
        config.out = out
        if config.name == nil { config.name = AtomicFile.splitPath(out).base }
        // The balance is written out resolved, so the checkpoint says how the run routed.
        if config.isMoE { config.balance = config.effectiveBalance?.rawValue }
        let dataset = try TrainingData.load(config)
        let model: GPT
        if let initFrom = config.initFrom {
            model = try ModelFactory.upcycle(config, from: initFrom, device: device)
        } else {
            model = ModelFactory.build(config, device: device)
        }
        self.init(config: config, model: model, device: device, dataset: dataset, outputDirectory: out, step: 0,
                  sampler: BatchSampler.State(seed: config.seed), elapsed: 0, valLoss: nil,
                  resumedFrom: nil, upcycledFrom: config.initFrom)
    }

    /// Settings a resumed run may change: how long it trains, where, and how often it reports.
    /// Everything else comes from the checkpoint, so the run continues exactly.
    public static let resumableKeys: Set<String> = ["steps", "device", "eval_every", "checkpoint_every", "keep_checkpoints", "log_every"]

    /// Continues the run saved at `path` (a run directory or one of its checkpoints): the model,
    /// optimizer, data position and random generators are restored, so the steps that follow are
    /// the ones the uninterrupted run would have taken.
    public static func resume(from path: String, overrides: [String: ConfigValue] = [:]) throws -> Trainer {
        if let key = overrides.keys.map(RunConfig.canonicalKey).sorted().first(where: { !resumableKeys.contains($0) }) {
            throw RunConfigError("\(RunConfig.flag(key)) cannot change when resuming: the run continues with the settings "
                + "saved in its checkpoint; only \(resumableKeys.sorted().map(RunConfig.flag).joined(separator: ", ")) may be given with --resume")
        }
        let directory = try Checkpoint.resolve(path)
        let saved = try Checkpoint.readState(directory)
        var config = saved.config
        try config.apply(overrides, source: "command line")
        try config.validate()
        guard saved.step < config.steps else {
            throw RunConfigError("--resume \(path): the checkpoint is at step \(saved.step) and the run has --steps \(config.steps); "
                + "nothing to do — pass a larger --steps to train further")
        }
        let runDirectory = AtomicFile.splitPath(directory).parent
        config.out = runDirectory
        let device = try config.resolveDevice()
        let dataset = try TrainingData.load(config)
        let fingerprint = DataFingerprint(dataset)
        guard fingerprint.tokenCount == saved.data.tokenCount && fingerprint.hash == saved.data.hash else {
            throw CheckpointError("--resume \(path): the data differs from the run's (\(saved.data.source), "
                + "\(saved.data.tokenCount) tokens; now \(fingerprint.source), \(fingerprint.tokenCount) tokens); "
                + "resume with the data the run trained on")
        }
        let model = ModelFactory.build(config, device: device)
        try Checkpoint.loadModel(model, from: directory, savedConfig: saved.config, expectedConfig: config)
        try RandomStates.restore(saved.generators, into: model, source: directory + "/" + Checkpoint.stateFile)
        let trainer = Trainer(config: config, model: model, device: device, dataset: dataset, outputDirectory: runDirectory,
                              step: saved.step, sampler: saved.sampler, elapsed: saved.elapsedSeconds, valLoss: saved.valLoss,
                              resumedFrom: directory, upcycledFrom: nil)
        try Checkpoint.loadOptimizer(trainer.optimizer, from: directory, device: device)
        guard trainer.optimizer.stepCount == saved.step else {
            throw CheckpointError("\(directory): the optimizer state is at step \(trainer.optimizer.stepCount) but state.json says "
                + "\(saved.step); the files come from different checkpoints — use another checkpoint")
        }
        return trainer
    }

    static func checkFreshOutput(_ out: String) throws {
        guard FileSystem.exists(out) else { return }
        guard FileSystem.isDirectory(out) else {
            throw TrainingError("--out \(out): a file is in the way; choose another --out or remove the file")
        }
        let runFiles = try FileSystem.listDirectory(out).filter {
            $0 == Checkpoint.latestFile || $0 == "metrics.jsonl" || $0.hasPrefix("checkpoint-")
        }
        if !runFiles.isEmpty {
            throw TrainingError("--out \(out): already holds a run (\(runFiles.prefix(3).joined(separator: ", "))); "
                + "continue it with --resume \(out), or choose another --out")
        }
    }

    /// Local time as `20260124-153012`, the default run name.
    static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        localtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let n = strftime(&buffer, buffer.count, "%Y%m%d-%H%M%S", &parts)
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: Training

    /// Trains from the current step to `config.steps` (or to step `stopAfter`, as if the run were
    /// interrupted there: the schedule still ends at `config.steps`). Evaluates every `evalEvery`
    /// steps and at the end, checkpoints every `checkpointEvery` steps and at the end.
    @discardableResult
    public func run(stopAfter: Int? = nil) throws -> TrainingSummary {
        let last = min(config.steps, stopAfter ?? config.steps)
        try FileSystem.makeDirectories(outputDirectory)
        let log = try MetricsLog(directory: outputDirectory)
        defer { log.close() }
        let loadMonitor = LoadMonitor.install(in: model)
        let moeLayers = loadMonitor.layerNames
        onEvent(.started(TrainingStart(
            config: config, device: device, outputDirectory: outputDirectory, parameterCount: model.parameterCount,
            flopsPerToken: model.flopsPerToken, moeLayers: moeLayers, dataSource: dataset.source,
            trainTokens: dataset.train.count, validationTokens: dataset.validation.count, unigramEntropy: unigramEntropy,
            startStep: step, resumedFrom: resumedFrom, upcycledFrom: upcycledFrom)))

        let processStart = monotonicSeconds()
        func elapsed() -> Double { elapsedBefore + monotonicSeconds() - processStart }
        if step == 0 { try evaluateAndLog(log, elapsed: elapsed()) }

        model.train()
        let parameters = model.parameters()
        let tokensPerStep = config.batchSize * config.seqLen
        var interval = IntervalStatistics()
        var smoothedStepSeconds: Double?
        var stepSeconds = 0.0, stepsRun = 0, skipped = 0
        var checkpoint: String?
        var collapseWatch = CollapseWatch()
        var collapseWarning: String?
        var biasMagnitude: [Double] = []   // shown until the next logging step
        while step < last {
            let started = monotonicSeconds()
            let lr = schedule.lr(at: step)
            optimizer.learningRate = lr
            let (x, y) = TrainingData.tensors(sampler.nextBatch(batchSize: config.batchSize, seqLen: config.seqLen),
                                              batchSize: config.batchSize, seqLen: config.seqLen, device: device)
            // The MoE layers' balance and z-losses are attached to the graph (`MoELayer.balanceLossWeight`).
            let lm = model.loss(ids: x, targets: y)
            lm.backward()
            let norm = config.clip > 0 ? clipGradNorm(parameters, maxNorm: config.clip) : 0
            if norm.isFinite { optimizer.step() } else { skipped += 1 }
            optimizer.zeroGrad()
            // Bias-balanced gates move their bias with this step's loads (only when the weights moved).
            loadMonitor.finishStep(updateBias: norm.isFinite)
            let loss = lm.item()
            guard loss.isFinite else {
                throw TrainingError("training diverged at step \(step + 1): the loss is \(loss); lower --lr (now \(config.lr)) "
                    + "or raise --warmup (now \(config.warmup)), and restart"
                    + (checkpoint.map { " or resume from \($0)" } ?? ""))
            }
            interval.add(loss: loss)
            step += 1
            let seconds = monotonicSeconds() - started
            stepSeconds += seconds
            stepsRun += 1
            interval.seconds += seconds
            // The first steps pay one-time costs (allocator warm-up, kernel compilation): smooth them away.
            smoothedStepSeconds = smoothedStepSeconds.map { 0.9 * $0 + 0.1 * seconds } ?? seconds

            let isLogStep = step % config.logEvery == 0 || step == last
            var intervalLoss: Double?
            var routing: [LayerRouting] = []
            if isLogStep {
                routing = config.isMoE ? loadMonitor.intervalRouting() : []
                var record = TrainRecord(step: step, loss: interval.meanLoss, lr: lr,
                                         tokensPerSecond: Double(interval.steps * tokensPerStep) / max(interval.seconds, 1e-9),
                                         elapsedSeconds: elapsed(), moe: config.isMoE ? MoELayerLoad.records(routing) : nil)
                collapseWarning = collapseMessage(collapseWatch.observe(routing.map { ($0.name, $0.load) }))
                biasMagnitude = routing.compactMap { $0.bias.map { $0.map(Swift.abs).max() ?? 0 } }
                if let collapseWarning { record.warnings = [collapseWarning] }
                try log.append(.train(record))
                intervalLoss = interval.meanLoss
            }
            let perStep = smoothedStepSeconds ?? seconds
            onEvent(.step(StepProgress(step: step, totalSteps: config.steps, loss: loss,
                                       tokensPerSecond: Double(tokensPerStep) / max(perStep, 1e-9), lr: lr,
                                       elapsedSeconds: elapsed(), etaSeconds: Double(config.steps - step) * perStep,
                                       balance: loadMonitor.interval().map(\.load.maxOverMean), isLogStep: isLogStep,
                                       intervalLoss: intervalLoss,
                                       biasMagnitude: biasMagnitude,
                                       warning: collapseWarning)))
            if isLogStep {
                interval = IntervalStatistics()
                loadMonitor.reset()
            }

            if (config.evalEvery > 0 && step % config.evalEvery == 0) || step == last {
                try evaluateAndLog(log, elapsed: elapsed())
            }
            if (config.checkpointEvery > 0 && step % config.checkpointEvery == 0) || step == last {
                checkpoint = try saveCheckpoint(elapsed: elapsed())
                onEvent(.checkpointSaved(step: step, path: checkpoint!))
            }
        }
        let summary = TrainingSummary(steps: step, finalValLoss: lastValLoss ?? evaluate(), unigramEntropy: unigramEntropy,
                                      elapsedSeconds: elapsed(),
                                      tokensPerSecond: stepsRun == 0 ? 0 : Double(stepsRun * tokensPerStep) / max(stepSeconds, 1e-9),
                                      outputDirectory: outputDirectory, checkpoint: checkpoint, skippedSteps: skipped)
        onEvent(.finished(summary))
        return summary
    }

    /// The warning for layers whose routing stayed collapsed (nil when none), naming the flag that fixes it.
    func collapseMessage(_ layers: [(name: String, maxOverMean: Double, ceiling: Double)]) -> String? {
        guard let first = layers.first else { return nil }
        let fix: String
        switch config.effectiveBalance {
        case .bias?: fix = "raise --bias-update-rate (now \(config.biasUpdateRate)) or use --balance aux"
        case .aux?: fix = "raise --balance-weight (now \(config.balanceWeight)) or use --balance bias"
        default:
            fix = config.gateSpec?.balances.contains(.bias) == true
                ? "use --balance bias (or --balance aux)" : "use a gate that balances, such as --gate topk --balance bias"
        }
        let names = layers.map(\.name).joined(separator: ", ")
        return "routing collapsed in \(layers.count) layer\(layers.count == 1 ? "" : "s") (\(names): max/mean \(fixed(first.maxOverMean, 2)) "
            + "of at most \(fixed(first.ceiling, 2))) for \(CollapseWatch().intervals)+ logging intervals; \(fix)"
    }

    /// Mean loss over the fixed validation batches, in evaluation mode (no dropout, no gate noise,
    /// evaluation capacity), without touching any generator or the data position.
    public func evaluate() -> Double { Evaluation.meanLoss(model: model, batches: validation) }

    func evaluateAndLog(_ log: MetricsLog, elapsed: Double) throws {
        let loss = evaluate()
        lastValLoss = loss
        try log.append(.eval(EvalRecord(step: step, valLoss: loss, elapsedSeconds: elapsed)))
        onEvent(.evaluated(step: step, valLoss: loss))
    }

    /// Writes `OUT/checkpoint-STEP` for the current step and returns its path.
    @discardableResult
    public func saveCheckpoint(elapsed: Double? = nil) throws -> String {
        let state = TrainingState(step: step, config: config, sampler: sampler.state, generators: RandomStates.capture(model),
                                  data: fingerprint, elapsedSeconds: elapsed ?? elapsedBefore, valLoss: lastValLoss)
        return try Checkpoint.save(runDirectory: outputDirectory, model: model, optimizer: optimizer, state: state,
                                   keep: config.keepCheckpoints)
    }
}

/// Sums over one logging interval: losses and seconds (the expert load is the `LoadMonitor`'s).
struct IntervalStatistics {
    var steps = 0
    var lossSum = 0.0
    var seconds = 0.0

    var meanLoss: Double { steps == 0 ? .nan : lossSum / Double(steps) }

    mutating func add(loss: Double) {
        steps += 1
        lossSum += loss
    }
}
