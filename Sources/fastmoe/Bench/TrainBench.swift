import ArgumentParser
import FastMoE

struct TrainBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Training throughput (tokens/s, model FLOP/s against the dense GEMM ceiling of the same run) and peak memory.")

    @Option(help: "Model and batch sizes: tiny, small, medium.")
    var preset: String = "tiny"

    @Option(help: "cpu, cuda, cuda:N or auto (CUDA when available).")
    var device: String = "auto"

    @Option(help: "fp32, bf16 (CUDA only) or tf32 (float32 with TF32 tensor-core GEMMs; plain fp32 on the CPU).")
    var precision: String = "fp32"

    @Option(parsing: .unconditional, help: "Experts per MoE layer (0 = dense).")
    var experts: Int = 0

    @Option(name: .customLong("top-k"), parsing: .unconditional, help: "Experts per token (default 2, or the gate's own k).")
    var topK: Int?

    @Option(help: ArgumentHelp(GateSpec.helpText))
    var gate: String?

    @Option(name: .customLong("batch-size"), parsing: .unconditional, help: "Windows per step (default: the preset's).")
    var batchSize: Int?

    @Option(parsing: .unconditional, help: "Timed training steps (the median is reported).")
    var repeats: Int = 10

    @Option(name: .customLong("grouped-gemm"),
            help: "How the experts' GEMMs run on CUDA: auto, lanes, serial, grouped, kernel or wgmma (see bench moe-layer).")
    var groupedGemm: String = "auto"

    @Flag(name: .customLong("cuda-graph"), help: "Time the step replayed as a CUDA graph (CUDA only; see train --cuda-graph).")
    var cudaGraph = false

    func validate() throws {
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1") }
        guard GroupedGemmStrategy(name: groupedGemm) != nil else {
            throw ValidationError("--grouped-gemm '\(groupedGemm)' is not one of \(GroupedGemmStrategy.allCases.map(\.name).joined(separator: ", "))")
        }
    }

    func run() throws {
        var overrides: [String: ConfigValue] = ["device": .string(device), "precision": .string(precision), "experts": .int(experts)]
        if let topK { overrides["top_k"] = .int(topK) }
        if let gate { overrides["gate"] = .string(gate) }
        if let batchSize { overrides["batch_size"] = .int(batchSize) }
        let config = try RunConfig.resolve(preset: preset, overrides: overrides)
        try config.validate()
        let dev = try config.resolveDevice()
        if cudaGraph && !dev.isCUDA { throw ValidationError("--cuda-graph records CUDA work: it needs --device cuda (this run is on \(dev))") }
        // The bench's corpus is sized below; its evaluation batches are none.
        // In Double: a large batch times a large window overflows Int (the estimate then refuses it).
        let wanted = 4 * Double(config.batchSize) * (Double(config.seqLen) + 1)
        let corpusBytes = wanted < Double(1 << 52) ? max(1 << 18, Int(wanted)) : 1 << 52
        try MemoryEstimate(config, purpose: .training, dataBytes: corpusBytes, evalBatches: 0).check(on: dev)
        CUDABackend.groupedGemmStrategy = GroupedGemmStrategy(name: groupedGemm)!
        // tf32: every float32 GEMM of this process's main thread (the steps and the ceiling) on TF32 tensor cores.
        Backends.threadAllowsTF32 = config.usesTF32
        let model = ModelFactory.build(config, device: dev)
        let optimizer = AdamW(parameters: model.namedParameters().map { ($0.name, $0.parameter) }, learningRate: config.lr,
                              weightDecay: config.weightDecay)
        // Enough text for distinct windows; the data do not change the speed.
        let corpus = SyntheticCorpus.generate(seed: 0, byteCount: corpusBytes)
        var sampler = BatchSampler(tokens: corpus, seed: config.seed)
        let parameters = model.parameters()
        let backend = Backends.backend(for: dev)
        // The trainer's step with --cuda-graph: it also reads the loss and the expert loads each step.
        let captured = cudaGraph
            ? CapturedStep(model: model, optimizer: optimizer, loadMonitor: LoadMonitor.install(in: model), maxNorm: config.clip,
                           parameters: parameters, batchSize: config.batchSize, seqLen: config.seqLen, device: dev) : nil
        var hostWaits = 0   // in the steps themselves, not the timing's synchronisations around them
        func step() {
            let waitsBefore = DeviceCounters.hostWaits.total
            defer { hostWaits += DeviceCounters.hostWaits.total - waitsBefore }
            let batch = sampler.nextBatch(batchSize: config.batchSize, seqLen: config.seqLen)
            let x = Tensor(batch.inputs, shape: [config.batchSize, config.seqLen], device: dev)
            let y = Tensor(batch.targets, shape: [config.batchSize, config.seqLen], device: dev)
            if let captured {
                _ = captured.run(inputs: x, targets: y, learningRate: config.lr)
                return
            }
            model.loss(ids: x, targets: y).backward()   // MoE balance losses ride on the graph
            clipGradNorm(parameters, maxNorm: config.clip)
            optimizer.step()
            optimizer.zeroGrad()
        }
        // First-use costs (kernel compilation, allocator growth; the capture) outside the timing.
        for _ in 0..<(captured.map { $0.eagerSteps + 1 } ?? 1) { step() }
        let launchesBefore = DeviceCounters.launches.total
        hostWaits = 0
        let ms = medianMilliseconds(repeats: repeats, sync: { backend.synchronize() }, step)
        // medianMilliseconds runs one untimed step before the timed ones.
        let launchesPerStep = (DeviceCounters.launches.total - launchesBefore) / (repeats + 1)
        let hostWaitsPerStep = hostWaits / (repeats + 1)
        let peak = backend.memoryStatistics.peak
        let tokens = Double(config.batchSize * config.seqLen)
        let tokensPerSecond = tokens / ms * 1e3
        let modelGFLOPs = model.flopsPerToken * tokensPerSecond / 1e9

        // The ceiling: a square dense GEMM in the activations' dtype on the same device.
        let n = dev.isCUDA ? 4096 : 1024
        var g = RandomGenerator(seed: 1)
        let a = Tensor.randomNormal([n, n], device: dev, generator: &g).cast(to: config.activationDType ?? .float32)
        let b = Tensor.randomNormal([n, n], device: dev, generator: &g).cast(to: config.activationDType ?? .float32)
        let gemmMs = medianMilliseconds(repeats: 5, sync: { backend.synchronize() }) { _ = withoutGradient { a.matmul(b) } }
        let gemmGFLOPs = 2 * Double(n * n * n) / gemmMs / 1e6

        let kind = (config.isMoE ? "moe \(config.experts)e top-\(config.effectiveTopK) \(config.gate)" : "dense") + (cudaGraph ? " graph" : "")
        let rows = [
            BenchRow(name: "gemm \(config.precision) \(n)³ (ceiling)", milliseconds: gemmMs, rate: gemmGFLOPs, unit: "GFLOP/s", ofCeiling: 1),
            BenchRow(name: "train step \(preset) \(kind)", milliseconds: ms, rate: tokensPerSecond, unit: "tokens/s"),
            BenchRow(name: "train model FLOP/s", milliseconds: ms, rate: modelGFLOPs, unit: "GFLOP/s", ofCeiling: modelGFLOPs / gemmGFLOPs),
        ]
        BenchRow.printTable(rows, title: "fastmoe bench train --preset \(preset) on \(dev) (\(DeviceChoice.describe(dev))): "
            + "batch \(config.batchSize)×\(config.seqLen), \(Format.fixed(model.flopsPerToken / 1e6, 2)) MFLOP/token, \(config.precision)")
        if let captured {
            if let failure = captured.captureFailure {
                print("CUDA graph: not captured, the steps ran eagerly (\(failure))")
            } else if let work = captured.work {
                print("CUDA graph: \(work.nodeCount) nodes replayed per step")
                print("{\"bench\":\"cuda graph\",\"nodes\":\(work.nodeCount),\"device\":\"\(dev)\"}")
            }
        }
        if dev.isCUDA {
            print("GPU launches per step: \(launchesPerStep) (our kernels and cuBLAS/cuBLASLt GEMM calls)")
            print("{\"bench\":\"launches per step\",\"launches\":\(launchesPerStep),\"device\":\"\(dev)\"}")
            print("host waits per step: \(hostWaitsPerStep) (read-backs and synchronisations, each draining the GPU's queue)")
            print("{\"bench\":\"host waits per step\",\"waits\":\(hostWaitsPerStep),\"device\":\"\(dev)\"}")
        }
        print("peak memory: \(Format.fixed(Double(peak) / 1_048_576, 1)) MiB (\(dev), since the process started)")
        print("{\"bench\":\"peak memory\",\"bytes\":\(peak),\"device\":\"\(dev)\"}")
    }
}
