#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Distributed
import MoE
import NN
import Tensors

/// Training stopped for a reason outside the configuration (an output directory in the way, a
/// diverged loss); the message says what to do.
public struct TrainingError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    /// `description` with its control characters escaped (``Swift/String/oneLine``): always one line.
    public init(_ description: String) { self.description = description.oneLine }
}

/// Trains the GPT (optionally MoE) model of a `RunConfig`: AdamW with warm-up and cosine decay,
/// gradient clipping, the MoE balance loss, evaluation on fixed validation batches, metrics
/// (`OUT/metrics.jsonl`, `OUT/metrics.csv`) and checkpoints (`OUT/checkpoint-STEP`, `OUT/latest`).
///
/// Preparing a trainer validates everything (settings, device, data, checkpoints) and writes
/// nothing; `run()` creates the output directory. So a mistake leaves no trace on disk.
///
/// Given a world group of W ranks (`world:`; the CLI's comes from `ProcessGroups.fromEnvironment`),
/// the trainer trains data-parallel: `--batch-size` windows per rank, gradients averaged (see
/// `DataParallel` and `GradientSync`), and rank 0 alone emits events and writes files.
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
    /// Asked before every step: true ends the run after the step in flight, as if it had been
    /// interrupted there (the CLI passes `InterruptSignals.received`).
    public var shouldStop: () -> Bool = { false }
    /// Whether a run ended by `shouldStop` writes a checkpoint of the step it reached (default on).
    public var checkpointOnExit = true
    /// Skip a step whose loss is not finite (no update) instead of stopping the run.
    public var skipNonFinite = false
    /// Largest data-parallel gradient bucket, in bytes (`--bucket-mb`, default 25 MiB); W > 1 only.
    public var bucketBytes = 25 << 20
    /// Record the training step as a CUDA graph after two steps and replay it (`--cuda-graph`;
    /// one rank on a CUDA device): see `CapturedStep`.
    public var cudaGraph = false
    /// Lets `cudaGraph` run off CUDA, every step eagerly (the tests' view of the captured step's arithmetic).
    var capturedStepOffCUDA = false
    /// The world group: this rank's place in a data-parallel run (a group of one otherwise).
    public var world: any ProcessGroup { parallel.world }
    let parallel: DataParallel
    /// Where the experts live when they are spread over ranks (`--expert-parallel`); nil = on every rank.
    public let expertLayout: ExpertLayout?
    /// Start over in a directory that holds a run: its run files are removed when `run()` starts.
    var overwrite = false
    /// Messages for the console about adjusted settings (an evaluation capped to the data).
    var notes: [String] = []
    /// Steps whose update was skipped, over every resumption (saved with checkpoints).
    var skippedSteps = 0

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
         sampler: BatchSampler.State, elapsed: Double, valLoss: Double?, resumedFrom: String?, upcycledFrom: String?,
         world: any ProcessGroup, experts layout: ExpertLayout? = nil) {
        parallel = DataParallel(world: world, batchSize: config.batchSize, seqLen: config.seqLen)
        expertLayout = layout
        // Capacity and gate noise of the global batch, and its balance losses unless
        // `--balance-statistics local`: the one-rank run's routing, whatever the layout.
        if world.size > 1 {
            setGlobalBatch(model, group: world)
            if config.balanceStatistics == "global" { setBalanceStatistics(model, group: world) }
        }
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
        // An evaluation cannot draw more distinct batches than the validation data holds. Batches are
        // global (W·b windows, as a one-rank run of that batch evaluates) and each rank takes its slice.
        let globalBatch = parallel.globalBatchSize
        let distinct = dataset.distinctValidationBatches(batchSize: globalBatch, seqLen: config.seqLen)
        if config.evalBatches > distinct {
            notes.append("--eval-batches \(config.evalBatches): the validation data (\(Format.count(dataset.validation.count)) tokens) "
                + "holds \(distinct) distinct batch\(distinct == 1 ? "" : "es") of \(globalBatch) windows; evaluating on \(distinct)")
        }
        if config.isMoE, let spec = config.gateSpec, spec.weightsNormalizedOverK, config.effectiveTopK == 1 {
            // FastMoE's gate does the same; a run that means to learn its routing from the loss
            // should know (benchmarks.md: this run trailed every other MoE shape).
            notes.append("--gate \(spec.name) with --top-k 1: a token's one weight is normalised over itself, so it is always 1 "
                + "and the loss gives the gate no gradient (it learns only from balancing); --gate switch weighs the expert "
                + "by its probability")
        }
        validation = dataset.validationBatches(batchSize: globalBatch, seqLen: config.seqLen, count: min(config.evalBatches, distinct))
            .map { [parallel] in TrainingData.tensors(parallel.slice($0), batchSize: config.batchSize, seqLen: config.seqLen, device: device) }
        fingerprint = DataFingerprint(dataset)
        unigramEntropy = TokenStatistics.unigramEntropy(of: dataset.validation)
    }

    // MARK: Preparing

    /// The trainer the command line asks for: a fresh run from `preset` → `configFile` → `overrides`,
    /// or, with `resume`, the run saved there continued (then only `Trainer.resumableKeys` may be
    /// overridden). Validates everything and writes nothing.
    ///
    /// `world` builds the world group once the device is known (`ProcessGroups.fromEnvironment` in the
    /// CLI); without it the run has one rank.
    public static func prepare(preset: String? = nil, configFile: String? = nil, overrides: [String: ConfigValue] = [:],
                               resume: String? = nil, overwrite: Bool = false,
                               world: ((Device) throws -> any ProcessGroup)? = nil) throws -> Trainer {
        if let resume {
            if overwrite {
                throw RunConfigError("--overwrite starts a run over and --resume continues one; give only one of them")
            }
            if preset != nil || configFile != nil {
                throw RunConfigError("--resume continues a run with the settings saved in its checkpoint; drop "
                    + [preset != nil ? "--preset" : nil, configFile != nil ? "--config" : nil].compactMap { $0 }.joined(separator: " and "))
            }
            return try Trainer.resume(from: resume, overrides: overrides, world: world)
        }
        return try Trainer(config: try RunConfig.resolve(preset: preset, configFile: configFile, overrides: overrides),
                           overwrite: overwrite, world: world)
    }

    /// A fresh run of `config` (validated here). Its output directory (`config.out`, or
    /// `runs/<name or time>`) must not hold a run already, unless `overwrite` starts that run over.
    /// What the run needs in memory is estimated first and refused if the device cannot hold it.
    public convenience init(config original: RunConfig, overwrite: Bool = false,
                            world makeWorld: ((Device) throws -> any ProcessGroup)? = nil) throws {
        try original.validate()
        var config = original
        let (world, device) = try DataParallel.join(makeWorld, device: try config.resolveDevice())
        let out = config.out ?? "runs/" + (config.name ?? Trainer.timestamp())
        try RunDirectory.checkFresh(out, overwrite: overwrite)
        config.out = out
        if config.name == nil { config.name = AtomicFile.splitPath(out).base }
        try TrainingData.estimate(config, purpose: .training).check(on: device)
        // The balance is written out resolved, so the checkpoint says how the run routed.
        if config.isMoE { config.balance = config.effectiveBalance?.rawValue }
        // So is the expert layout of a run on several ranks (resuming with another is a choice, not a default).
        let layout = try ExpertLayout.make(config, world: world)
        if config.isMoE && world.size > 1 { config.expertParallel = layout?.size ?? 1 }
        let dataset = try TrainingData.load(config)
        let model: GPT
        if let initFrom = config.initFrom {
            model = try ModelFactory.upcycle(config, from: initFrom, device: device, experts: layout)
        } else {
            model = ModelFactory.build(config, device: device, experts: layout)
        }
        self.init(config: config, model: model, device: device, dataset: dataset, outputDirectory: out, step: 0,
                  sampler: BatchSampler.State(seed: config.seed), elapsed: 0, valLoss: nil,
                  resumedFrom: nil, upcycledFrom: config.initFrom, world: world, experts: layout)
        self.overwrite = overwrite
    }

    /// Settings a resumed run may change: how long it trains, where, and how often it reports, and
    /// how its experts are spread over the ranks (checkpoints re-shard on load).
    /// Everything else comes from the checkpoint, so the run continues exactly.
    public static let resumableKeys: Set<String> = ["steps", "device", "eval_every", "checkpoint_every", "keep_checkpoints", "log_every",
                                                    "expert_parallel"]

    /// Continues the run saved at `path` (a run directory or one of its checkpoints): the model,
    /// optimizer, data position and random generators are restored, so the steps that follow are
    /// the ones the uninterrupted run would have taken.
    public static func resume(from path: String, overrides: [String: ConfigValue] = [:],
                              world makeWorld: ((Device) throws -> any ProcessGroup)? = nil) throws -> Trainer {
        if let key = overrides.keys.map(RunConfig.canonicalKey).sorted().first(where: { !resumableKeys.contains($0) }) {
            throw RunConfigError("\(RunConfig.flag(key)) cannot change when resuming: the run continues with the settings "
                + "saved in its checkpoint; only \(resumableKeys.sorted().map(RunConfig.flag).joined(separator: ", ")) may be given with --resume")
        }
        if let refusal = RunDirectory.resumeWithoutCheckpoint(path) { throw refusal }
        let directory = try Checkpoint.resolve(path)
        let saved = try Checkpoint.readState(directory)
        // The saved sizes must match the saved tensors before a model of those sizes is built.
        let modelFile = try Checkpoint.readModelFile(directory)
        let modelPath = directory + "/" + Checkpoint.modelFile
        try Checkpoint.checkSavedConfig(saved.config, against: modelFile, path: modelPath,
                                        statePath: directory + "/" + Checkpoint.stateFile)
        var config = saved.config
        try config.apply(overrides, source: "command line")
        try config.validate()
        guard saved.step < config.steps else {
            throw RunConfigError("--resume \(path): the checkpoint is at step \(saved.step) and the run has --steps \(config.steps); "
                + "nothing to do — pass a larger --steps to train further")
        }
        let runDirectory = AtomicFile.splitPath(directory).parent
        config.out = runDirectory
        let (world, device) = try DataParallel.join(makeWorld, device: try config.resolveDevice())
        try DataParallel.checkResume(saved, path: path, world: world)
        let layout = try ExpertLayout.make(config, world: world)
        if config.isMoE && world.size > 1 { config.expertParallel = layout?.size ?? 1 }
        try TrainingData.estimate(config, purpose: .training).check(on: device)
        let dataset = try TrainingData.load(config)
        let fingerprint = DataFingerprint(dataset)
        guard fingerprint.tokenCount == saved.data.tokenCount && fingerprint.hash == saved.data.hash else {
            throw CheckpointError("--resume \(path): the data differs from the run's (\(saved.data.source), "
                + "\(saved.data.tokenCount) tokens; now \(fingerprint.source), \(fingerprint.tokenCount) tokens); "
                + "resume with the data the run trained on")
        }
        let model = ModelFactory.build(config, device: device, experts: layout)
        try Checkpoint.loadModel(model, from: modelFile, path: modelPath, savedConfig: saved.config, expectedConfig: config,
                                 experts: layout?.slice)
        try RandomStates.restore(saved.generators, into: model, source: directory + "/" + Checkpoint.stateFile)
        let trainer = Trainer(config: config, model: model, device: device, dataset: dataset, outputDirectory: runDirectory,
                              step: saved.step, sampler: saved.sampler, elapsed: saved.elapsedSeconds, valLoss: saved.valLoss,
                              resumedFrom: directory, upcycledFrom: nil, world: world, experts: layout)
        trainer.skippedSteps = saved.skippedSteps
        try Checkpoint.loadOptimizer(trainer.optimizer, from: directory, device: device,
                                     experts: layout.map { (model, $0.slice) })
        // Skipped steps made no update, so the optimizer counts only the others.
        guard trainer.optimizer.stepCount == saved.step - saved.skippedSteps else {
            throw CheckpointError("\(directory): the optimizer state is at step \(trainer.optimizer.stepCount) but state.json says "
                + "\(saved.step) (\(saved.skippedSteps) skipped); the files come from different checkpoints — use another checkpoint")
        }
        return trainer
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
    ///
    /// When `shouldStop` turns true, the run ends after the step in flight: its metrics record is
    /// written, a checkpoint too with `checkpointOnExit`, and the summary says `interrupted`.
    /// A non-finite loss throws (naming the step, the last good checkpoint and the likely causes)
    /// unless `skipNonFinite` skips that step.
    @discardableResult
    public func run(stopAfter: Int? = nil) throws -> TrainingSummary {
        // precision tf32: this thread's float32 GEMMs run on TF32 tensor cores for the run, and not after it.
        try config.withMathMode { try train(stopAfter: stopAfter) }
    }

    func train(stopAfter: Int?) throws -> TrainingSummary {
        let last = min(config.steps, stopAfter ?? config.steps)
        try checkCUDAGraph()
        // Every rank checks the model and takes rank 0's values before rank 0 writes anything, so no
        // rank still validating its output directory sees rank 0's files.
        let sync = try parallel.gradientSync(for: model, bucketBytes: bucketBytes, experts: expertLayout, expertGradient: config.expertGradient)
        let writes = parallel.writes
        let directoryNotes = writes
            ? try RunDirectory.prepare(outputDirectory, resumedAt: resumedFrom != nil ? step : nil, overwrite: overwrite) : []
        overwrite = false  // a second run() continues this one
        let log = writes ? try MetricsLog(directory: outputDirectory) : nil
        defer { log?.close() }
        let loadMonitor = LoadMonitor.install(in: model)
        let moeLayers = loadMonitor.layerNames
        let captured = cudaGraph ? CapturedStep(model: model, optimizer: optimizer, loadMonitor: loadMonitor, maxNorm: config.clip,
                                                parameters: model.parameters(), batchSize: config.batchSize, seqLen: config.seqLen,
                                                device: device) : nil
        var captureWarning: String?   // shown at the next logging step
        emit(.started(TrainingStart(
            config: config, device: device, outputDirectory: outputDirectory, parameterCount: globalParameterCount,
            flopsPerToken: model.flopsPerToken, moeLayers: moeLayers, dataSource: dataset.source,
            trainTokens: dataset.train.count, validationTokens: dataset.validation.count, unigramEntropy: unigramEntropy,
            startStep: step, resumedFrom: resumedFrom, upcycledFrom: upcycledFrom, notes: directoryNotes + notes,
            worldSize: parallel.size)))

        let processStart = monotonicSeconds()
        func elapsed() -> Double { elapsedBefore + monotonicSeconds() - processStart }
        if step == 0 { try evaluateAndLog(log, elapsed: elapsed()) }

        model.train()
        let parameters = model.parameters()
        let tokensPerStep = parallel.globalBatchSize * config.seqLen
        var interval = IntervalStatistics()
        var smoothedStepSeconds: Double?
        var stepSeconds = 0.0, stepsRun = 0, skipped = 0
        var checkpoint: String?
        var interrupted = false
        var collapseWatch = CollapseWatch()
        var collapseWarning: String?
        var biasMagnitude: [Double] = []   // shown until the next logging step
        while step < last {
            if parallel.anyRank(shouldStop()) {
                interrupted = true
                break
            }
            let started = monotonicSeconds()
            let lr = schedule.lr(at: step)
            optimizer.learningRate = lr
            // The global batch, as one rank with W·b windows draws it; this rank keeps its b.
            let (x, y) = TrainingData.tensors(parallel.slice(sampler.nextBatch(batchSize: parallel.globalBatchSize, seqLen: config.seqLen)),
                                              batchSize: config.batchSize, seqLen: config.seqLen, device: device)
            let loss: Double
            var capturedNorm: Double?
            if let captured {
                // Forward, backward and update in one replay; a non-finite step was skipped on the device.
                let triedCapture = captured.work != nil || captured.captureFailure != nil
                let outcome = captured.run(inputs: x, targets: y, learningRate: lr)
                (loss, capturedNorm) = (outcome.loss, outcome.gradientNorm)
                if !triedCapture, let failure = captured.captureFailure {
                    captureWarning = "--cuda-graph: the step could not be captured, so it runs without a graph (\(failure))"
                }
            } else {
                // The MoE layers' balance and z-losses are attached to the graph (`MoELayer.balanceLossWeight`).
                let lm = model.loss(ids: x, targets: y)
                // The backward is enqueued before the loss is read, so the device computes it while the
                // host waits for the loss. With W > 1 each bucket's all-reduce starts as soon as
                // backward has finished its gradients.
                if let sync { sync.backward(lm) } else { lm.backward() }
                // The global batch's loss (the same on every rank, so all skip or stop together).
                loss = parallel.mean(of: lm)
            }
            guard loss.isFinite else {
                // Before the update: the weights stay those of the last finite step.
                optimizer.zeroGrad()
                guard skipNonFinite else {
                    throw TrainingError(NonFiniteLoss.message(step: step + 1, loss: loss, config: config,
                                                              lastCheckpoint: checkpoint ?? resumedFrom, runDirectory: outputDirectory))
                }
                skipped += 1
                skippedSteps += 1
                step += 1
                interval.seconds += monotonicSeconds() - started
                if step % config.logEvery == 0 || step == last, interval.steps > 0 {
                    let loads = config.isMoE ? parallel.sum(loadMonitor.interval()) : []
                    try log?.append(.train(TrainRecord(step: step, loss: interval.meanLoss, lr: lr,
                                                       tokensPerSecond: Double(interval.steps * tokensPerStep) / max(interval.seconds, 1e-9),
                                                       elapsedSeconds: elapsed(), moe: config.isMoE ? MoELayerLoad.records(loads) : nil)))
                    interval = IntervalStatistics()
                    loadMonitor.reset()
                }
                if (config.checkpointEvery > 0 && step % config.checkpointEvery == 0) || step == last {
                    checkpoint = try saveCheckpoint(elapsed: elapsed())
                    emit(.checkpointSaved(step: step, path: checkpoint!))
                }
                continue
            }
            if let capturedNorm {
                if !capturedNorm.isFinite { skipped += 1; skippedSteps += 1 }
            } else {
                let norm = config.clip > 0 ? (sync?.clipGradNorm(maxNorm: config.clip) ?? clipGradNorm(parameters, maxNorm: config.clip)) : 0
                if norm.isFinite { optimizer.step() } else { skipped += 1; skippedSteps += 1 }
                optimizer.zeroGrad()
                // Bias-balanced gates move their bias with this step's loads, summed over the ranks so that
                // every replica moves alike (only when the weights moved).
                loadMonitor.finishStep(updateBias: norm.isFinite, summing: parallel.sum)
            }
            interval.add(loss: loss)
            step += 1
            let seconds = monotonicSeconds() - started
            stepSeconds += seconds
            stepsRun += 1
            interval.seconds += seconds
            // The first steps pay one-time costs (allocator warm-up, kernel compilation): smooth them away.
            smoothedStepSeconds = smoothedStepSeconds.map { 0.9 * $0 + 0.1 * seconds } ?? seconds

            // A stop request ends the interval here, so its steps are logged before the checkpoint.
            let stopping = parallel.anyRank(shouldStop())
            // The global batch's expert load (one small all-reduce when W > 1).
            let loads = config.isMoE ? parallel.sum(loadMonitor.interval()) : []
            let isLogStep = step % config.logEvery == 0 || step == last || stopping
            var intervalLoss: Double?
            var routing: [LayerRouting] = []
            if isLogStep {
                // The routing record with the global batch's loads.
                routing = config.isMoE ? zip(loadMonitor.intervalRouting(), loads).map { layer, global in
                    var layer = layer
                    layer.load = global.load
                    return layer
                } : []
                var record = TrainRecord(step: step, loss: interval.meanLoss, lr: lr,
                                         tokensPerSecond: Double(interval.steps * tokensPerStep) / max(interval.seconds, 1e-9),
                                         elapsedSeconds: elapsed(), moe: config.isMoE ? MoELayerLoad.records(routing) : nil)
                collapseWarning = collapseMessage(collapseWatch.observe(routing.map { ($0.name, $0.load) }))
                biasMagnitude = routing.compactMap { $0.bias.map { $0.map(Swift.abs).max() ?? 0 } }
                let warnings = [captureWarning, collapseWarning].compactMap { $0 }
                if !warnings.isEmpty { record.warnings = warnings }
                try log?.append(.train(record))
                intervalLoss = interval.meanLoss
            }
            let perStep = smoothedStepSeconds ?? seconds
            let shownWarnings = [isLogStep ? captureWarning : nil, collapseWarning].compactMap { $0 }
            emit(.step(StepProgress(step: step, totalSteps: config.steps, loss: loss,
                                       tokensPerSecond: Double(tokensPerStep) / max(perStep, 1e-9), lr: lr,
                                       elapsedSeconds: elapsed(), etaSeconds: Double(config.steps - step) * perStep,
                                       balance: loads.map(\.load.maxOverMean), isLogStep: isLogStep,
                                       intervalLoss: intervalLoss,
                                       biasMagnitude: biasMagnitude,
                                       warning: shownWarnings.isEmpty ? nil : shownWarnings.joined(separator: "; "))))
            if isLogStep {
                captureWarning = nil
                interval = IntervalStatistics()
                loadMonitor.reset()
            }

            if stopping {
                interrupted = true
                break
            }
            if (config.evalEvery > 0 && step % config.evalEvery == 0) || step == last {
                try evaluateAndLog(log, elapsed: elapsed())
            }
            if (config.checkpointEvery > 0 && step % config.checkpointEvery == 0) || step == last {
                checkpoint = try saveCheckpoint(elapsed: elapsed())
                emit(.checkpointSaved(step: step, path: checkpoint!))
            }
        }
        // Stopped early: save where the run got to, unless that checkpoint exists already.
        if interrupted && checkpointOnExit && checkpoint != outputDirectory + "/" + Checkpoint.directoryName(step: step)
            && !(stepsRun == 0 && resumedFrom != nil) {
            checkpoint = try saveCheckpoint(elapsed: elapsed())
            emit(.checkpointSaved(step: step, path: checkpoint!))
        }
        let newest = checkpoint ?? (try? Checkpoint.resolve(outputDirectory))
        let summary = TrainingSummary(steps: step, finalValLoss: interrupted ? (lastValLoss ?? .nan) : (lastValLoss ?? evaluate()),
                                      unigramEntropy: unigramEntropy,
                                      elapsedSeconds: elapsed(),
                                      tokensPerSecond: stepsRun == 0 ? 0 : Double(stepsRun * tokensPerStep) / max(stepSeconds, 1e-9),
                                      outputDirectory: outputDirectory, checkpoint: interrupted ? newest : checkpoint,
                                      skippedSteps: skipped, interrupted: interrupted, totalSteps: config.steps)
        emit(.finished(summary))
        // No rank returns before rank 0's last checkpoint is written (a rank resuming next reads it).
        if parallel.isDistributed { world.barrier() }
        return summary
    }

    /// Refuses `cudaGraph` where the step cannot be one graph: off CUDA, and across ranks (the
    /// gradients' all-reduce and the experts' exchange wait for the host).
    func checkCUDAGraph() throws {
        guard cudaGraph else { return }
        guard device.isCUDA || capturedStepOffCUDA else {
            throw TrainingError("--cuda-graph records the training step as a CUDA graph: it needs --device cuda (this run is on \(device))")
        }
        guard !parallel.isDistributed else {
            throw TrainingError("--cuda-graph captures one rank's step; this run has \(parallel.size) ranks, whose gradient "
                + "all-reduce and expert exchange are not captured: run one process, or drop --cuda-graph")
        }
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
        return "routing collapsed in \(layers.count) layer\(layers.count == 1 ? "" : "s") (\(names): max/mean \(Format.fixed(first.maxOverMean, 2)) "
            + "of at most \(Format.fixed(first.ceiling, 2))) for \(CollapseWatch().intervals)+ logging intervals; \(fix)"
    }

    /// Mean loss over the fixed validation batches, in evaluation mode (no dropout, no gate noise,
    /// evaluation capacity), without touching any generator or the data position. With W ranks each
    /// evaluates its slice of every batch and the result is their mean (every rank must call it).
    public func evaluate() -> Double { parallel.mean(Evaluation.meanLoss(model: model, batches: validation)) }

    func evaluateAndLog(_ log: MetricsLog?, elapsed: Double) throws {
        let loss = evaluate()
        lastValLoss = loss
        try log?.append(.eval(EvalRecord(step: step, valLoss: loss, elapsedSeconds: elapsed)))
        emit(.evaluated(step: step, valLoss: loss))
    }

    /// Events reach `onEvent` on rank 0 only: one rank speaks for the run.
    func emit(_ event: TrainingEvent) {
        if parallel.writes { onEvent(event) }
    }

    /// Writes `OUT/checkpoint-STEP` for the current step and returns its path (on rank 0; the other
    /// ranks of a data-parallel run write nothing and return the path rank 0 writes). With sharded
    /// experts every rank must call it: ranks `0 ..< W_ep` write their experts' shards first
    /// (`ExpertShards`), and rank 0 moves them into the checkpoint it builds.
    @discardableResult
    public func saveCheckpoint(elapsed: Double? = nil) throws -> String {
        if let layout = expertLayout {
            if layout.writesShard {
                try ExpertShards.write(model: model, optimizer: optimizer, range: layout.expertRange, globalExperts: layout.globalExpertCount,
                                       shards: layout.size, rank: layout.rank, step: step,
                                       to: ExpertShards.stagingDirectory(runDirectory: outputDirectory, step: step))
            }
            world.barrier()
        }
        // No rank goes on before the checkpoint is complete (a shard writer's next checkpoint, or a
        // rank resuming next, would otherwise race rank 0's rename).
        defer { if expertLayout != nil { world.barrier() } }
        guard parallel.writes else { return outputDirectory + "/" + Checkpoint.directoryName(step: step) }
        var state = TrainingState(step: step, config: config, sampler: sampler.state, generators: RandomStates.capture(model),
                                  data: fingerprint, elapsedSeconds: elapsed ?? elapsedBefore, valLoss: lastValLoss)
        state.skippedSteps = skippedSteps
        state.worldSize = parallel.size
        return try Checkpoint.save(runDirectory: outputDirectory, model: model, optimizer: optimizer, state: state,
                                   keep: config.keepCheckpoints, expertShards: expertLayout?.size ?? 0)
    }

    /// The model's parameters over all ranks: an expert-parallel rank holds `1/W_ep` of the experts.
    var globalParameterCount: Int {
        guard let layout = expertLayout else { return model.parameterCount }
        let experts = model.namedParameters().filter { $0.parameter.group == .expert }.reduce(0) { $0 + $1.parameter.value.count }
        return model.parameterCount + (layout.size - 1) * experts
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
