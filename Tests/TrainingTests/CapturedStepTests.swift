import Foundation
import MoE
import NN
import Tensors
import TestSupport
import Testing
@testable import Training

/// The training step that `--cuda-graph` records (`CapturedStep`), run eagerly on the CPU: its
/// arithmetic (schedule and clipping read from tensors, the step skipped on the device, the routing
/// bias moved in place) must be the trainer's ordinary step. The capture itself runs on the GPU
/// (`CUDATrainingTests`).
@Suite struct CapturedStepTests {
    static func config(_ extra: [String: ConfigValue] = [:]) throws -> RunConfig {
        var overrides: [String: ConfigValue] = ["experts": .int(4), "top_k": .int(2), "clip": .double(0.5)]
        for (k, v) in extra { overrides[k] = v }
        return try RunConfig.resolve(preset: "tiny", overrides: tinyRun(out: "unused", overrides))
    }

    /// The trainer's ordinary step: loss, backward, clipGradNorm, AdamW, then the bias step from the host loads.
    static func ordinaryStep(_ model: GPT, _ optimizer: AdamW, _ monitor: LoadMonitor, x: Tensor, y: Tensor, clip: Double) -> Double {
        let loss = model.loss(ids: x, targets: y)
        let value = loss.item()
        loss.backward()
        let norm = clipGradNorm(model.parameters(), maxNorm: clip)
        if norm.isFinite { optimizer.step() }
        optimizer.zeroGrad()
        monitor.finishStep(updateBias: norm.isFinite)
        return value
    }

    @Test func capturedArithmeticIsTheOrdinaryStep() throws {
        let config = try Self.config()
        let a = ModelFactory.build(config, device: .cpu), b = ModelFactory.build(config, device: .cpu)
        let optA = AdamW(parameters: a.namedParameters().map { ($0.name, $0.parameter) }, learningRate: config.lr, weightDecay: config.weightDecay)
        let optB = AdamW(parameters: b.namedParameters().map { ($0.name, $0.parameter) }, learningRate: config.lr, weightDecay: config.weightDecay)
        let monitorA = LoadMonitor.install(in: a), monitorB = LoadMonitor.install(in: b)
        #expect(monitorB.hasRoutingBias, "the default gate balances by a routing bias: its device step is covered")
        let step = CapturedStep(model: b, optimizer: optB, loadMonitor: monitorB, maxNorm: config.clip, parameters: b.parameters(),
                                batchSize: config.batchSize, seqLen: config.seqLen, device: .cpu)
        let corpus = SyntheticCorpus.generate(seed: 0, byteCount: 20_000)
        var sampler = BatchSampler(tokens: corpus, seed: 5)
        let schedule = LearningRateSchedule(peakLR: config.lr, warmupSteps: 2, totalSteps: 6)
        for t in 0..<6 {
            let batch = sampler.nextBatch(batchSize: config.batchSize, seqLen: config.seqLen)
            let x = Tensor(batch.inputs, shape: [config.batchSize, config.seqLen]), y = Tensor(batch.targets, shape: [config.batchSize, config.seqLen])
            optA.learningRate = schedule.lr(at: t)
            let expected = Self.ordinaryStep(a, optA, monitorA, x: x, y: y, clip: config.clip)
            let outcome = step.run(inputs: x, targets: y, learningRate: schedule.lr(at: t))
            #expect(abs(outcome.loss - expected) < 1e-5 * max(1, abs(expected)), "step \(t): \(outcome.loss) vs \(expected)")
            #expect(outcome.gradientNorm.isFinite && outcome.gradientNorm > 0)
        }
        #expect(step.work == nil && step.captureFailure == nil, "the CPU runs the step eagerly, without trying to capture")
        #expect(optA.stepCount == 6 && optB.stepCount == 6)
        for ((name, p), q) in zip(a.namedParameters(), b.parameters()) {
            #expect(maxDifference(p.value.doubles(), q.value.doubles()) < 1e-4, "\(name)")
        }
        let biasA = monitorA.intervalRouting().compactMap(\.bias), biasB = monitorB.intervalRouting().compactMap(\.bias)
        #expect(biasA.count == 2 && biasA == biasB, "the routing biases moved alike: \(biasA) vs \(biasB)")
        #expect(biasB.contains { $0.contains { $0 != 0 } })
        #expect(monitorA.interval().map(\.load.routedCounts) == monitorB.interval().map(\.load.routedCounts))
    }

    @Test func aNonFiniteStepIsSkippedWithoutTouchingTheWeights() throws {
        let config = try Self.config()
        let model = ModelFactory.build(config, device: .cpu)
        let optimizer = AdamW(parameters: model.namedParameters().map { ($0.name, $0.parameter) }, learningRate: config.lr)
        let monitor = LoadMonitor.install(in: model)
        let step = CapturedStep(model: model, optimizer: optimizer, loadMonitor: monitor, maxNorm: config.clip, parameters: model.parameters(),
                                batchSize: config.batchSize, seqLen: config.seqLen, device: .cpu)
        // An infinite embedding row makes the loss (and the gradient) non-finite.
        let embedding = try #require(model.namedParameters().first { $0.name.hasSuffix("wte.weight") }?.parameter)
        var values = embedding.value.doubles()
        values[0] = .infinity
        embedding.value = Tensor(values, shape: embedding.shape, dtype: embedding.value.dtype)
        let before = parameterBytes(model)
        let ids = Tensor([Int32](repeating: 0, count: config.batchSize * config.seqLen), shape: [config.batchSize, config.seqLen])
        let outcome = step.run(inputs: ids, targets: ids, learningRate: config.lr)
        #expect(!outcome.loss.isFinite)
        #expect(parameterBytes(model) == before, "the weights are those before the step")
        #expect(optimizer.stepCount == 0)
    }

    @Test func cudaGraphOffCUDAIsRefusedBeforeAnythingIsWritten() throws {
        let dir = TemporaryDirectory()
        let out = dir.file("run")
        let trainer = try Trainer.prepare(overrides: tinyRun(out: out, steps: 3))
        trainer.cudaGraph = true
        #expect { try trainer.run() } throws: { error in
            "\(error)".contains("--cuda-graph") && "\(error)".contains("--device cuda")
        }
        #expect(!FileManager.default.fileExists(atPath: out))
    }

    /// The trainer's loop around the captured step (losses, skipped steps, logging, checkpoints):
    /// the same run as the ordinary loop, to float32 rounding.
    @Test func theTrainerLoopWithTheCapturedStepTrainsAsTheOrdinaryLoop() throws {
        let dir = TemporaryDirectory()
        let settings: [String: ConfigValue] = ["experts": .int(4), "top_k": .int(2), "eval_every": .int(10)]
        let plain = try Trainer.prepare(overrides: tinyRun(out: dir.file("plain"), steps: 10, settings))
        try plain.run()
        let captured = try Trainer.prepare(overrides: tinyRun(out: dir.file("captured"), steps: 10, settings))
        captured.cudaGraph = true
        captured.capturedStepOffCUDA = true
        try captured.run()
        let a = try evalLosses(dir.file("plain")), b = try evalLosses(dir.file("captured"))
        #expect(a.map(\.step) == b.map(\.step))
        for (x, y) in zip(a, b) { #expect(abs(x.loss - y.loss) < 1e-4, "eval at step \(x.step): \(x.loss) vs \(y.loss)") }
        #expect(captured.optimizer.stepCount == 10)
        let records = try MetricsLog.read(path: dir.file("captured") + "/metrics.jsonl").compactMap { r -> TrainRecord? in
            if case .train(let t) = r { return t } else { return nil }
        }
        #expect(records.map(\.step) == [5, 10])
        #expect(records.allSatisfy { $0.moe?.count == 2 })
    }
}
