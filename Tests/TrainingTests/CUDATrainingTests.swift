import MoE
import NN
import Testing
import Tensors
@testable import Training

/// The same tiny run on the CPU and on CUDA: per-step training losses must agree (float32 without
/// TF32: summation order only; bfloat16 activations: bf16 rounding).
@Suite("Training on CUDA against the CPU", .enabled(if: Device.cudaAvailable), .serialized)
struct CUDATrainingTests {
    func losses(device: String, precision: String, _ extra: [String: ConfigValue] = [:]) throws -> [Double] {
        let dir = TemporaryDirectory()
        var settings = tinyRun(out: dir.file("run"), steps: 20, ["log_every": .int(1), "device": .string(device),
                                                                "precision": .string(precision)])
        for (k, v) in extra { settings[k] = v }
        try Trainer.prepare(overrides: settings).run()
        return try MetricsLog.read(path: dir.file("run") + "/metrics.jsonl").compactMap {
            if case .train(let t) = $0 { return t.loss } else { return nil }
        }
    }

    func worstRelativeGap(_ a: [Double], _ b: [Double]) -> Double {
        guard a.count == b.count, !a.isEmpty else { return .infinity }
        return zip(a, b).map { Swift.abs($0 - $1) / Swift.abs($1) }.max()!
    }

    @Test(arguments: [[String: ConfigValue](), ["experts": .int(4), "top_k": .int(2)]])
    func float32LossCurveMatchesTheCPU(_ extra: [String: ConfigValue]) throws {
        let cpu = try losses(device: "cpu", precision: "fp32", extra)
        let cuda = try losses(device: "cuda", precision: "fp32", extra)
        #expect(cpu.count == 20)
        let gap = worstRelativeGap(cuda, cpu)
        #expect(gap < 1e-3, "fp32 loss curves differ by \(gap): cpu \(cpu) cuda \(cuda)")
    }

    /// The captured step (`--cuda-graph`) replays what it ran eagerly: twin models, one of which
    /// never captures, take the same steps on the same batches.
    /// With dropout and a noisy gate, so the replays' random draws must be the eager steps' too,
    /// also after the generators moved between steps.
    @Test(arguments: ["fp32", "bf16"])
    func replayedStepsAreTheEagerSteps(precision: String) throws {
        let config = try RunConfig.resolve(preset: "tiny", overrides: tinyRun(out: "unused", [
            "experts": .int(4), "gate": .string("noisy"), "dropout": .double(0.1), "device": .string("cuda"),
            "precision": .string(precision)]))
        let device = try config.resolveDevice()
        var steps: [CapturedStep] = []
        var models: [GPT] = []
        for captures in [false, true] {
            let model = ModelFactory.build(config, device: device)
            let optimizer = AdamW(parameters: model.namedParameters().map { ($0.name, $0.parameter) }, learningRate: config.lr)
            let step = CapturedStep(model: model, optimizer: optimizer, loadMonitor: LoadMonitor.install(in: model), maxNorm: config.clip,
                                    parameters: model.parameters(), batchSize: config.batchSize, seqLen: config.seqLen, device: device)
            if !captures { step.eagerSteps = .max }
            steps.append(step)
            models.append(model)
        }
        var sampler = BatchSampler(tokens: SyntheticCorpus.generate(seed: 0, byteCount: 20_000), seed: 5)
        var losses: [[Double]] = [[], []]
        for s in 0..<8 {
            let batch = sampler.nextBatch(batchSize: config.batchSize, seqLen: config.seqLen)
            let x = Tensor(batch.inputs, shape: [config.batchSize, config.seqLen], device: device)
            let y = Tensor(batch.targets, shape: [config.batchSize, config.seqLen], device: device)
            for i in 0..<2 { losses[i].append(steps[i].run(inputs: x, targets: y, learningRate: config.lr).loss) }
            // Something else moves the generators between two replays: the next replays follow.
            if s == 4 {
                for model in models {
                    for (k, entry) in model.namedRandomSources().enumerated() {
                        let g = entry.source.generator
                        entry.source.generator = RandomGenerator(seed: g.seed, offset: g.offset + 1000 + UInt64(k))
                    }
                }
            }
        }
        #expect(steps[1].captureFailure == nil, "\(steps[1].captureFailure ?? "")")
        #expect(steps[1].work != nil && steps[0].work == nil)
        #expect(worstRelativeGap(losses[1], losses[0]) < 1e-5, "replayed \(losses[1]) eager \(losses[0])")
        #expect(losses[0].last! < losses[0].first!)
        var worst = 0.0
        for ((name, p), q) in zip(models[0].namedParameters(), models[1].parameters()) {
            let gap = zip(p.value.doubles(), q.value.doubles()).map { Swift.abs($0 - $1) }.max() ?? 0
            worst = max(worst, gap)
            #expect(gap < 1e-4, "\(name): \(gap)")
        }
        print("\(precision) replayed against eager: losses \(losses[0] == losses[1] ? "identical" : "differ"), largest weight difference \(worst)")
        if precision == "bf16" { #expect(losses[0] == losses[1] && worst == 0, "bf16 replays are the eager steps bit for bit") }
        let generators = models.map { RandomStates.capture($0) }
        #expect(generators[0] == generators[1], "the replays leave the generators where the eager steps do")
    }

    /// The trainer with `--cuda-graph`: the ordinary run's losses, with and without dropout.
    @Test func trainerWithACUDAGraphTrainsAsWithout() throws {
        let dir = TemporaryDirectory()
        for (name, dropout) in [("graph", 0.0), ("dropout", 0.1)] {
            let plain = try losses(device: "cuda", precision: "fp32", ["experts": .int(4), "top_k": .int(2), "dropout": .double(dropout)])
            let trainer = try Trainer.prepare(overrides: tinyRun(out: dir.file(name), steps: 20, [
                "log_every": .int(1), "device": .string("cuda"), "experts": .int(4), "top_k": .int(2), "dropout": .double(dropout)]))
            trainer.cudaGraph = true
            try trainer.run()
            let records = try MetricsLog.read(path: dir.file(name) + "/metrics.jsonl").compactMap { r -> TrainRecord? in
                if case .train(let t) = r { return t } else { return nil }
            }
            // Captured: no warning that the step ran without a graph (the tiny routing may collapse).
            let warnings = records.flatMap(\.warnings).filter { $0.contains("--cuda-graph") }
            #expect(warnings.isEmpty, "\(warnings)")
            let graphLosses = records.map(\.loss)
            #expect(worstRelativeGap(graphLosses, plain) < 1e-4, "\(name): graph \(graphLosses) plain \(plain)")
        }
    }

    /// A run stopped and resumed with `--cuda-graph` (two eager steps, then a new capture) ends
    /// where the straight run does: in bf16 bit for bit, dropout masks and gate noise included (in
    /// fp32 a replayed step is the eager step only to rounding: the libraries' float32 GEMMs run
    /// differently while a stream is captured).
    @Test func resumeWithACUDAGraphEndsWhereTheStraightRunDoes() throws {
        let dir = TemporaryDirectory()
        let settings: [String: ConfigValue] = ["device": .string("cuda"), "precision": .string("bf16"), "experts": .int(4),
                                               "gate": .string("noisy"), "dropout": .double(0.1), "log_every": .int(3)]
        let straight = try Trainer.prepare(overrides: tinyRun(out: dir.file("straight"), steps: 12, settings))
        straight.cudaGraph = true
        try straight.run()
        let first = try Trainer.prepare(overrides: tinyRun(out: dir.file("split"), steps: 12, settings))
        first.cudaGraph = true
        try first.run(stopAfter: 6)
        let resumed = try Trainer.prepare(resume: dir.file("split"))
        resumed.cudaGraph = true
        try resumed.run()
        var worst = 0.0, identical = 0
        for ((name, p), q) in zip(straight.model.namedParameters(), resumed.model.parameters()) {
            let a = p.value.doubles(), b = q.value.doubles()
            if a == b { identical += 1 }
            let gap = zip(a, b).map { Swift.abs($0 - $1) }.max() ?? 0
            worst = max(worst, gap)
            #expect(gap == 0, "\(name): \(gap)")
        }
        print("resume with --cuda-graph: \(identical) of \(straight.model.parameters().count) parameters identical, largest difference \(worst)")
        #expect(straight.optimizer.stepCount == 12 && resumed.optimizer.stepCount == 12)
    }

    /// Expert choice picks its tokens on the host: its step cannot be one graph. The run says so
    /// once and trains eagerly.
    @Test func aStepThatReadsTheDeviceTrainsWithoutAGraphAndSaysWhy() throws {
        let dir = TemporaryDirectory()
        let trainer = try Trainer.prepare(overrides: tinyRun(out: dir.file("ec"), steps: 10, [
            "device": .string("cuda"), "experts": .int(4), "gate": .string("expert-choice"), "capacity_factor": .double(2)]))
        trainer.cudaGraph = true
        try trainer.run()
        let records = try MetricsLog.read(path: dir.file("ec") + "/metrics.jsonl").compactMap { r -> TrainRecord? in
            if case .train(let t) = r { return t } else { return nil }
        }
        let warnings = records.flatMap(\.warnings).filter { $0.contains("--cuda-graph") }
        #expect(warnings.count == 1 && warnings[0].contains("read-back"), "\(warnings)")
        #expect(records.count == 2 && records.allSatisfy { $0.loss.isFinite })
        #expect(trainer.optimizer.stepCount == 10)
    }

    /// `fastmoe compare` compiles its modules before either run (`compileModules`): after a bf16 MoE
    /// run, every module this process has compiled must be one that call compiles for some dtype, or
    /// a run could still compile inside its timed steps.
    @Test func compareCompilesEveryKindOfModuleARunUses() throws {
        _ = try losses(device: "cuda", precision: "bf16", ["experts": .int(4), "top_k": .int(2), "steps": .int(3)])
        let cuda = try #require(Backends.backend(for: .cuda(0)) as? CUDABackend)
        cuda.compileModules(for: .bfloat16)
        let prepared = Set([DType.bfloat16, .float32, .float64].flatMap { CUDABackend.moduleKeys(compiledFor: $0) })
        let loaded = cuda.loadedModuleKeys
        #expect(loaded.isSubset(of: prepared), "\(loaded.subtracting(prepared)) not compiled up front")
        #expect(loaded.isSuperset(of: CUDABackend.moduleKeys(compiledFor: .bfloat16).filter { !$0.hasPrefix("hopper") }))
    }

    /// Every sum on the CUDA path has a fixed order (the embedding gradient too), so one seed gives
    /// one run: the same losses to the last bit (docs/training.md, "Runs repeat").
    @Test(arguments: ["fp32", "bf16"])
    func aRunRepeatsBitForBit(precision: String) throws {
        let moe: [String: ConfigValue] = ["experts": .int(4), "top_k": .int(2)]
        let first = try losses(device: "cuda", precision: precision, moe)
        #expect(first == (try losses(device: "cuda", precision: precision, moe)))
    }

    /// A mixed-precision GPT's first forward casts its weights one by one; later ones take the copies
    /// its `CastPlan` made in one launch. Both must give the same loss and gradients, bit for bit.
    @Test func theWeightsCopiesMadeTogetherAreTheCastsOwn() {
        var g = RandomGenerator(seed: 21)
        let gpu = Device.cuda(0)
        let model = GPT(GPTConfig(contextLength: 16, layers: 2, dModel: 32, heads: 4), device: gpu, generator: &g)
        model.activationDType = .bfloat16
        let ids = Tensor((0..<64).map { Int32($0 * 7 % 256) }, shape: [4, 16]).to(gpu)
        let targets = Tensor((0..<64).map { Int32($0 * 5 % 256) }, shape: [4, 16]).to(gpu)
        func step() -> [[Double]] {
            for p in model.parameters() { p.grad = nil }
            let loss = model.loss(ids: ids, targets: targets)
            loss.backward()
            return [loss.doubles()] + model.parameters().map { $0.grad!.doubles() }
        }
        let first = step()
        #expect(step() == first)
    }

    @Test func bfloat16LossCurveFollowsTheCPU() throws {
        let cpu = try losses(device: "cpu", precision: "fp32")
        let cuda = try losses(device: "cuda", precision: "bf16")
        let gap = worstRelativeGap(cuda, cpu)
        #expect(gap < 3e-2, "bf16 loss curve differs from fp32 CPU by \(gap): cpu \(cpu) cuda \(cuda)")
        #expect(cuda.last! < cuda.first! * 0.9)
    }
}
