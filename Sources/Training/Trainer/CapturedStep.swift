import MoE
import NN
import Tensors

/// One rank's training step as work the device records once and then replays with one launch
/// (`--cuda-graph`): the forward and loss, the backward, the gradients' squared norm, AdamW with
/// clipping, and the bias-balanced routers' step. No host decision sits inside it:
/// - what changes from step to step is read from device memory written before each replay: the
///   batch (the step's own input tensors), AdamW's schedule (`ScheduledStep`) and each random
///   draw's advance (`ReplayedRandomness`), so dropout masks and gate noise are the eager step's;
/// - clipping and skipping a step whose gradient norm (or loss) is not finite happen on the device;
/// - the host reads the loss, the squared norm and the MoE layers' expert counts in one download
///   per step, after the replay.
///
/// The first `eagerSteps` steps run the same work as it is enqueued (kernels compile, AdamW's
/// moments and the allocator's blocks appear), then the step is captured. A step that cannot be
/// captured (it reads the device mid-way: expert choice's host top-C, one GEMM per expert) and a
/// backend without graphs (the CPU) run every step eagerly: the same arithmetic, which the tests
/// compare with the trainer's ordinary step.
public final class CapturedStep {
    public struct Outcome {
        public var loss: Double
        /// The gradients' global L2 norm before clipping (not finite: the step was skipped).
        public var gradientNorm: Double
    }

    let model: GPT
    let optimizer: AdamW
    let loadMonitor: LoadMonitor
    let maxNorm: Double
    /// The parameters whose gradients are clipped together (the model's).
    let parameters: [Parameter]
    /// Steps run eagerly before the capture.
    public var eagerSteps = 2
    /// The step as the device replays it, once captured.
    public var work: ReplayableWork? { captured?.work }
    /// Why the step could not be captured (it then runs eagerly), once a capture was tried.
    public private(set) var captureFailure: String?
    private let inputs: Tensor, targets: Tensor
    private let schedule: Tensor
    /// One int32 slot per random draw of the step (`GraphCapturing`); more draws fail the capture.
    private let randomAdvance: Tensor
    /// The captured step: its work, the tensor each replay rewrites with `[loss, Σ g², counts…]`,
    /// the loads it records and how its random draws follow the eager steps'.
    private var captured: Captured?
    private typealias Captured = (work: ReplayableWork, stats: Tensor, loads: CapturedLoads, randomness: ReplayedRandomness)
    private var stepsRun = 0
    static let randomSlots = 4096

    public init(model: GPT, optimizer: AdamW, loadMonitor: LoadMonitor, maxNorm: Double, parameters: [Parameter],
         batchSize: Int, seqLen: Int, device: Device) {
        (self.model, self.optimizer, self.loadMonitor, self.maxNorm) = (model, optimizer, loadMonitor, maxNorm)
        self.parameters = parameters
        inputs = Tensor.zeros([batchSize, seqLen], dtype: .int32, device: device)
        targets = Tensor.zeros([batchSize, seqLen], dtype: .int32, device: device)
        schedule = Tensor.zeros([3], dtype: .float32, device: device)
        randomAdvance = Tensor.zeros([Self.randomSlots], dtype: .int32, device: device)
    }

    /// Trains on `x`, `y` (`[b, T]` int32 on the step's device) at `learningRate`.
    public func run(inputs x: Tensor, targets y: Tensor, learningRate: Double) -> Outcome {
        let backend = inputs.backend
        backend.copy(x, to: inputs)
        backend.copy(y, to: targets)
        optimizer.learningRate = learningRate
        write(optimizer.nextSchedule(), to: schedule)
        stepsRun += 1

        if captured == nil, stepsRun > eagerSteps, captureFailure == nil, let capturing = backend as? GraphCapturing {
            capture(on: capturing)
        }
        let stats: Tensor
        if let captured {
            replay(captured)
            stats = captured.stats
        } else {
            stats = enqueueStep()
        }
        let values = stats.doubles()   // the step's one read-back
        let norm = values[1].squareRoot()
        if norm.isFinite { optimizer.countStep() }
        loadMonitor.resolvePending(values.dropFirst(2).map { Int($0) })
        loadMonitor.finishStep(updateBias: false)   // the bias moved on the device
        return Outcome(loss: values[0], gradientNorm: norm)
    }

    /// Captures the step into `captured`, or says in `captureFailure` why it cannot be
    /// captured. Either way the generators go back to where the capture found them (it ran
    /// nothing): this step's replay, or the eager step that stands in for it, moves them on.
    private func capture(on backend: GraphCapturing) {
        let sources = model.namedRandomSources()
        let before = sources.map(\.source.generator)
        defer { for (entry, state) in zip(sources, before) { entry.source.generator = state } }
        var stats: Tensor?
        do {
            let work = try backend.captureGraph(randomAdvance: randomAdvance) { stats = enqueueStep() }
            let randomness = try ReplayedRandomness.match(draws: work.randomDraws, sources: sources, before: before).get()
            captured = (work, stats!, loadMonitor.takeCapturedLoads(), randomness)
        } catch {
            loadMonitor.discardPendingLoads()   // recorded by work that never ran
            captureFailure = "\(error)"
        }
    }

    /// Enqueues the next replay: its random draws are those of the eager step it stands for.
    private func replay(_ captured: Captured) {
        // Only the captured draws' slots are read: the rest of the table stays as it is.
        let advances = captured.randomness.advances()
        if !advances.isEmpty { write(advances, to: randomAdvance.rows(0..<advances.count)) }
        captured.work.replay()
        captured.randomness.moveGenerators()
        loadMonitor.recordReplay(captured.loads)
    }

    /// Enqueues one step; returns `[loss, Σ g², the MoE layers' counts…]` in float64 (exact for counts).
    private func enqueueStep() -> Tensor {
        let loss = model.loss(ids: inputs, targets: targets)
        loss.backward()
        let squares = sumOfSquares(parameters.compactMap(\.grad))
        // 0·loss is 0, or NaN when the loss is not finite: such a step is skipped like one whose
        // gradient norm is not finite (the ordinary step stops before its backward).
        let lossValue = loss.detached().reshaped([1]).cast(to: squares.dtype)
        let guarded = withoutGradient { squares + lossValue * 0 }
        optimizer.step(scheduled: ScheduledStep(schedule: schedule, gradientSquares: guarded, maxNorm: maxNorm))
        loadMonitor.updateBiasOnDevice(skipUnlessFinite: guarded)
        optimizer.zeroGrad()
        let parts = [lossValue, guarded] + (loadMonitor.pendingCounts().map { [$0] } ?? [])
        return Tensor.concat(parts.map { $0.cast(to: .float64) }, axis: 0)
    }

    private func write<Element: BitwiseCopyable>(_ values: [Element], to tensor: Tensor) {
        values.withUnsafeBytes { tensor.backend.upload($0, to: tensor) }
    }
}
