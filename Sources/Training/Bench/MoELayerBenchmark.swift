import Distributed
import MoE
import NN
import Tensors

// Notation: T tokens, D model width, H each expert's hidden width, E experts, K experts per token,
// N = T·K routed rows. The layer is `MoELayer.mlp` (gate Linear(D,E) → top-K → experts
// Linear(D,H) → GELU(tanh) → Linear(H,D) with biases → weighted combine); the dense line is one
// `MLP(D, H)` over N rows: the FLOPs of the experts with perfect balance. Under a launcher with W > 1
// ranks (ExpertParallelBenchmark.swift) E is the experts on each rank, E·W in all.

/// One configuration of `fastmoe bench moe-layer`.
public struct MoELayerBenchConfig: Sendable, Equatable {
    /// T.
    public var tokens: Int
    /// D.
    public var dModel: Int
    /// H, each expert's (and the dense line's) hidden width.
    public var hidden: Int
    /// E: the layer's experts, or each rank's when the bench runs over W > 1 ranks.
    public var experts: Int
    /// K.
    public var topK: Int
    /// `fp32`, `bf16` (parameters, activations and GEMM operands in bfloat16; CUDA only) or `tf32`
    /// (float32 with TF32 tensor-core GEMMs; plain float32 on the CPU).
    public var precision: String
    /// A gate of the table (`GateSpec.all`).
    public var gate: String
    /// Timed iterations per measurement (the median is reported).
    public var iterations: Int
    /// Untimed iterations before them (kernel compilation, cuBLAS heuristics, allocator growth).
    public var warmup: Int
    /// Pre-made random input sets cycled through the MoE layer's iterations. Default: one per
    /// iteration, so that the routing, and with it every expert's row count, changes each iteration
    /// as in training (with 3 sets cycled, per-shape costs such as cuBLAS's heuristic were paid only
    /// in the warm-up and the bench hid a 4.7× slower bfloat16 training step). The dense line, whose
    /// shapes never change, cycles at most 3 (its inputs are K times larger).
    public var inputSets: Int {
        get { requestedInputSets ?? warmup + iterations }
        set { requestedInputSets = newValue }
    }
    private var requestedInputSets: Int?
    public var seed: UInt64
    /// How the CUDA backend runs the experts' GEMMs (`.automatic` unless a comparison pins one).
    public var groupedGemm: GroupedGemmStrategy = .automatic
    /// Time only the MoE layer's forward + backward (no dense line, GEMMs or peak memory; those
    /// fields are NaN or 0): a short run to put under a kernel profiler such as `ncu`.
    public var moeOnly = false
    /// W, the ranks the layer's experts are spread over (`MoELayerBenchmark.run` sets it from its group).
    public internal(set) var world = 1

    public init(tokens: Int, dModel: Int, hidden: Int, experts: Int, topK: Int, precision: String = "fp32",
                gate: String = "topk", iterations: Int = 20, warmup: Int = 3, inputSets: Int? = nil, seed: UInt64 = 1) {
        self.tokens = tokens
        self.dModel = dModel
        self.hidden = hidden
        self.experts = experts
        self.topK = topK
        self.precision = precision
        self.gate = gate
        self.iterations = iterations
        self.warmup = warmup
        requestedInputSets = inputSets
        self.seed = seed
    }

    /// The element type of parameters and activations.
    public var dtype: DType { precision == "bf16" ? .bfloat16 : .float32 }

    /// E·W: the experts of the layer in all.
    public var globalExperts: Int { experts * world }

    /// "fp32 T=4096 D=1024 H=4096 E=8 K=2 topk"; over W > 1 ranks "... E=8/rank×4 K=2 topk".
    public var label: String {
        "\(precision) T=\(tokens) D=\(dModel) H=\(hidden) E=\(experts)\(world > 1 ? "/rank×\(world)" : "") K=\(topK) \(gate)"
            + (groupedGemm == .automatic ? "" : " \(groupedGemm.name)")
    }

    /// Expert FLOPs of one forward, `2·T·K·(2·D·H)`, plus the gate's `2·T·D·(E·W)` (on each rank, on average).
    public var forwardFLOPs: Double { denseForwardFLOPs + 2 * Double(tokens) * Double(dModel) * Double(globalExperts) }
    /// The dense line's forward FLOPs: `2·N·(2·D·H)`.
    public var denseForwardFLOPs: Double { 2 * Double(tokens * topK) * 2 * Double(dModel) * Double(hidden) }

    /// The rows of the issue's table (issue 10): `paper` (fp32, E from 2 to 128), `fine` (bf16 fine-grained
    /// experts), `mixtral` (bf16, large experts).
    public static func preset(_ name: String) -> [MoELayerBenchConfig]? {
        switch name {
        case "paper":
            return [2, 8, 32, 128].map { MoELayerBenchConfig(tokens: 4096, dModel: 1024, hidden: 4096, experts: $0, topK: 2, precision: "fp32") }
        case "fine":
            return [(8, 2), (64, 2), (64, 8)].map {
                MoELayerBenchConfig(tokens: 16384, dModel: 2048, hidden: 1408, experts: $0.0, topK: $0.1, precision: "bf16")
            }
        case "mixtral":
            return [MoELayerBenchConfig(tokens: 8192, dModel: 4096, hidden: 14336, experts: 8, topK: 2, precision: "bf16")]
        default:
            return nil
        }
    }

    public static let presetNames = ["paper", "fine", "mixtral"]

    /// Checks the sizes and names for a run over `world` ranks; the message names the flag and the fix.
    public func validate(device: Device, world: Int = 1) throws {
        func fail(_ message: String) -> RunConfigError { RunConfigError(message) }
        for (flag, value) in [("--tokens", tokens), ("--d-model", dModel), ("--hidden", hidden), ("--experts", experts),
                              ("--iterations", iterations), ("--input-sets", inputSets)] where value < 1 {
            throw fail("\(flag) is \(value); it must be at least 1")
        }
        guard warmup >= 0 else { throw fail("--warmup is \(warmup); use 0 or more untimed iterations") }
        guard RunConfig.precisionNames.contains(precision) else {
            throw fail("--precision '\(precision)' is not one of \(RunConfig.precisionNames.joined(separator: ", "))")
        }
        if precision == "bf16" && !device.isCUDA {
            throw fail("--precision bf16 runs on CUDA only (bfloat16 is storage-only on the CPU); use fp32 or tf32 on the CPU")
        }
        guard let spec = GateSpec.named(gate) else {
            throw fail("--gate '\(gate)' is not one of \(GateSpec.all.map(\.name).joined(separator: ", "))")
        }
        guard topK >= 1 && topK <= experts else {
            guard world > 1 else {
                throw fail("--top-k is \(topK) but there are \(experts) experts; each token goes to 1 ... \(experts) of them")
            }
            throw fail("--top-k is \(topK) but --experts is \(experts) per rank (under a launcher it counts each of the \(world) ranks' "
                + "experts); the one-rank layer the efficiency compares against routes each token to \(topK) of those \(experts), "
                + "so use a --top-k of at most \(experts), or more experts per rank")
        }
        if let k = spec.fixedTopK, k != topK {
            throw fail("--top-k is \(topK) but the \(gate) gate routes every token to \(k); use --top-k \(k) or --gate topk")
        }
    }
}

/// What one configuration measured. Times are medians in milliseconds; bytes are the allocator's.
public struct MoELayerBenchResult: Sendable {
    public var config: MoELayerBenchConfig
    public var device: Device
    /// The MoE layer: forward (recording the graph, as in training) and forward + backward.
    public var forwardMs: Double
    public var forwardBackwardMs: Double
    /// The dense line: `MLP(D, H)` over `T·K` rows, same dtype, same run.
    public var denseForwardMs: Double
    public var denseForwardBackwardMs: Double
    /// The six GEMMs of the dense line's forward and backward, each timed alone through the backend's
    /// GEMM (cuBLAS on CUDA) on pre-made operands, in the order fc1, fc2, fc2 dA, fc2 dW, fc1 dX, fc1 dW.
    public var denseGemmMs: [Double]
    /// The same six GEMMs one after another in one timed region: what they take back to back, as a
    /// layer runs them, at the clock the GPU holds under that load (NaN where not measured).
    public var denseGemmChainMs: Double = .nan
    /// Bytes the layer's forward + backward allocated at its peak beyond what was live before it (the
    /// parameters and inputs), gradients of the parameters and the input included.
    public var peakBytes: Int
    /// What that forward + backward must hold (see ``mustKeepBytes(_:parameterBytes:)``).
    public var mustKeepBytes: Int
    /// The same two for the dense line.
    public var densePeakBytes: Int
    public var denseMustKeepBytes: Int
    /// Max over mean of the tokens routed per expert by the gate on one of the inputs (1 = balanced);
    /// over W > 1 ranks, of the tokens of every rank.
    public var loadMaxOverMean: Double
    /// Over W > 1 ranks: the one-rank baseline and the all-to-all; the times above are then the
    /// expert-parallel layer's (the slowest rank's), and the dense line and peak memory are not measured.
    public var expertParallel: ExpertParallelBenchResult? = nil

    /// The sum of `denseGemmMs`: the dense line's ceiling.
    public var denseGemmSumMs: Double { denseGemmMs.reduce(0, +) }
    public var forwardTFLOPs: Double { config.forwardFLOPs / forwardMs / 1e9 }
    public var forwardBackwardTFLOPs: Double { 3 * config.forwardFLOPs / forwardBackwardMs / 1e9 }
    public var denseForwardBackwardTFLOPs: Double { 3 * config.denseForwardFLOPs / denseForwardBackwardMs / 1e9 }
    /// MoE fwd+bwd time over the dense line's (the issue's targets are on this ratio).
    public var ratio: Double { forwardBackwardMs / denseForwardBackwardMs }
    public var forwardRatio: Double { forwardMs / denseForwardMs }
    /// Dense fwd+bwd time over the sum of its GEMMs alone (1 = no overhead around the GEMMs).
    public var denseOverGemmSum: Double { denseForwardBackwardMs / denseGemmSumMs }
    /// Dense fwd+bwd time over its GEMMs chained (1 = nothing but the GEMMs, back to back).
    public var denseOverGemmChain: Double { denseForwardBackwardMs / denseGemmChainMs }
    public var peakOverMustKeep: Double { Double(peakBytes) / Double(max(mustKeepBytes, 1)) }

    /// One JSON object on one line, for tools (non-finite numbers as null).
    public var jsonLine: String {
        let c = config
        func d(_ key: String, _ x: Double) -> JSONMember { JSONMember(key, .double(x)) }
        func i(_ key: String, _ x: Int) -> JSONMember { JSONMember(key, .int(x)) }
        func s(_ key: String, _ x: String) -> JSONMember { JSONMember(key, .string(x)) }
        var members: [JSONMember] = [
            s("bench", "moe-layer"), s("device", "\(device)"), s("precision", c.precision), s("gate", c.gate),
            s("grouped_gemm", c.groupedGemm.name),
            i("T", c.tokens), i("D", c.dModel), i("H", c.hidden), i("E", c.experts), i("K", c.topK),
            i("iterations", c.iterations), i("warmup", c.warmup), i("input_sets", c.inputSets),
            d("fwd_ms", forwardMs), d("fwd_bwd_ms", forwardBackwardMs),
            d("fwd_tflops", forwardTFLOPs), d("fwd_bwd_tflops", forwardBackwardTFLOPs),
            d("load_max_over_mean", loadMaxOverMean),
        ]
        if let ep = expertParallel {
            members += [
                i("world", c.world), i("experts_per_rank", c.experts), i("global_experts", c.globalExperts),
                d("tokens_per_s", tokensPerSecond), d("local_fwd_ms", ep.localForwardMs),
                d("local_fwd_bwd_ms", ep.localForwardBackwardMs), d("efficiency", efficiency ?? .nan),
                i("a2a_bytes", ep.allToAllBytes), d("a2a_ms", ep.allToAllMs),
                d("a2a_algbw_gbps", ep.allToAllAlgbw), d("a2a_busbw_gbps", ep.allToAllBusbw),
            ]
            return JSONValue.object(members).serialized()
        }
        members += [
            d("dense_fwd_ms", denseForwardMs), d("dense_fwd_bwd_ms", denseForwardBackwardMs),
            d("dense_fwd_bwd_tflops", denseForwardBackwardTFLOPs),
            d("ratio_fwd", forwardRatio), d("ratio_fwd_bwd", ratio),
            JSONMember("dense_gemm_ms", .array(denseGemmMs.map { .double($0) })),
            d("dense_gemm_sum_ms", denseGemmSumMs), d("dense_over_gemm_sum", denseOverGemmSum),
            d("dense_gemm_chain_ms", denseGemmChainMs), d("dense_over_gemm_chain", denseOverGemmChain),
            i("peak_bytes", peakBytes), i("must_keep_bytes", mustKeepBytes), d("peak_over_must_keep", peakOverMustKeep),
            i("dense_peak_bytes", densePeakBytes), i("dense_must_keep_bytes", denseMustKeepBytes),
        ]
        return JSONValue.object(members).serialized()
    }
}

/// `fastmoe bench moe-layer`: the MoE MLP layer against the dense line of the same run.
///
/// ```swift
/// let config = MoELayerBenchConfig(tokens: 4096, dModel: 1024, hidden: 4096, experts: 8, topK: 2)
/// let result = try MoELayerBenchmark.run(config, device: .cuda(0))
/// print(result.jsonLine)
/// ```
public enum MoELayerBenchmark {
    /// Builds the layer and the dense line, times both, then their GEMMs, then measures peak memory.
    /// TF32 (precision tf32) is switched on for the calling thread during the run only.
    ///
    /// With a `group` of W > 1 ranks (every rank calls it, with the same config) it measures expert
    /// parallelism instead: see `measureExpertParallel`. The result is the same on every rank.
    public static func run(_ config: MoELayerBenchConfig, device: Device, group: (any ProcessGroup)? = nil) throws -> MoELayerBenchResult {
        var config = config
        config.world = group?.size ?? 1
        try config.validate(device: device, world: config.world)
        if let group, group.device != device {
            throw RunConfigError("the bench runs on \(device) but the process group '\(group.name)' moves tensors on \(group.device); "
                + "give the group's device (under a launcher each rank's is cuda:LOCAL_RANK, or cpu for MPI ranks)")
        }
        let previous = CUDABackend.groupedGemmStrategy
        CUDABackend.groupedGemmStrategy = config.groupedGemm
        defer { CUDABackend.groupedGemmStrategy = previous }
        return Backends.withTF32(config.precision == "tf32") {
            if let group, group.size > 1 { return measureExpertParallel(config, device: device, group: group) }
            return measure(config, device: device)
        }
    }

    static func measure(_ c: MoELayerBenchConfig, device: Device) -> MoELayerBenchResult {
        let dtype = c.dtype
        var g = RandomGenerator(seed: c.seed)
        let spec = GateSpec.named(c.gate)!
        let moe = MoELayer.mlp(dModel: c.dModel, hidden: c.hidden, expertCount: c.experts, topK: c.topK, gate: spec,
                               dtype: dtype, device: device, generator: &g)
        // Gates with a balance loss train with it: it rides on the graph as in a training step.
        if spec.hasBalanceLoss { moe.balanceLossWeight = 0.01 }
        let dense = MLP(c.dModel, hidden: c.hidden, activation: .gelu(approximate: true), device: device, dtype: dtype, generator: &g)

        let rows = c.tokens * c.topK
        func inputs(_ count: Int, sets: Int? = nil) -> [Tensor] {
            (0..<(sets ?? c.inputSets)).map { _ in Tensor.randomNormal([count, c.dModel], dtype: dtype, device: device, generator: &g) }
        }
        let moeInputs = inputs(c.tokens), moeUpstream = inputs(c.tokens)
        let loadMaxOverMean = withoutGradient { moe.forward(moeInputs[0]).load.maxOverMean }
        let moeTimes = layerTimings(device, c, { moe($0) }, moe.parameters(), moeInputs, moeUpstream)
        if c.moeOnly {
            return MoELayerBenchResult(
                config: c, device: device, forwardMs: moeTimes.forward, forwardBackwardMs: moeTimes.forwardBackward,
                denseForwardMs: .nan, denseForwardBackwardMs: .nan, denseGemmMs: [], peakBytes: 0, mustKeepBytes: 0,
                densePeakBytes: 0, denseMustKeepBytes: 0, loadMaxOverMean: loadMaxOverMean)
        }
        let denseInputs = inputs(rows, sets: min(c.inputSets, 3)), denseUpstream = inputs(rows, sets: min(c.inputSets, 3))
        let denseTimes = layerTimings(device, c, { dense($0) }, dense.parameters(), denseInputs, denseUpstream)
        let gemms = denseGemmMilliseconds(c, rows: rows, device: device, generator: &g)

        let moePeak = peakBytes(device, { moe($0) }, moe.parameters(), moeInputs[0], moeUpstream[0])
        let densePeak = peakBytes(device, { dense($0) }, dense.parameters(), denseInputs[0], denseUpstream[0])
        let moeParameterBytes = moe.parameters().reduce(0) { $0 + $1.value.byteCount }
        let denseParameterBytes = dense.parameters().reduce(0) { $0 + $1.value.byteCount }
        return MoELayerBenchResult(
            config: c, device: device, forwardMs: moeTimes.forward, forwardBackwardMs: moeTimes.forwardBackward,
            denseForwardMs: denseTimes.forward, denseForwardBackwardMs: denseTimes.forwardBackward, denseGemmMs: gemms.alone,
            denseGemmChainMs: gemms.chained, peakBytes: moePeak, mustKeepBytes: mustKeepBytes(c, parameterBytes: moeParameterBytes),
            densePeakBytes: densePeak, denseMustKeepBytes: denseMustKeepBytes(c, parameterBytes: denseParameterBytes),
            loadMaxOverMean: loadMaxOverMean)
    }

    /// Median ms of `layer`'s forward and of its forward + backward over the rotated inputs `xs` and
    /// upstream gradients `dys`. `before` runs untimed before every iteration (the ranks' barrier).
    static func layerTimings(_ device: Device, _ c: MoELayerBenchConfig, _ layer: (Tensor) -> Tensor, _ parameters: [Parameter],
                             _ xs: [Tensor], _ dys: [Tensor], before: () -> Void = {}) -> (forward: Double, forwardBackward: Double) {
        var x = xs[0]
        // Before each iteration, untimed: a fresh leaf for the input gradient, no parameter gradients
        // (set to none, as a training step leaves them, so no accumulation is timed).
        func prepare(_ i: Int) {
            for p in parameters { p.grad = nil }
            x = xs[i % xs.count].detached().requiringGradient()
            before()
        }
        // Forward + backward first: it is the number that must see every routing fresh.
        let forwardBackward = medianMilliseconds(device, c, prepare) { i in layer(x).backward(dys[i % dys.count]) }
        let forward = medianMilliseconds(device, c, prepare) { _ in _ = layer(x) }
        for p in parameters { p.grad = nil }
        return (forward, forwardBackward)
    }

    /// What a forward + backward of the layer must allocate beyond its inputs `x`, `dy` and its
    /// parameters: the routed rows (N·D), the hidden activations before and after GELU (2·N·H), the
    /// experts' output rows (N·D), the gate's logits (T·E), the output `y` and the input gradient `dx`
    /// (T·D each), and the parameter gradients.
    public static func mustKeepBytes(_ c: MoELayerBenchConfig, parameterBytes: Int) -> Int {
        let n = c.tokens * c.topK
        let elements = 2 * n * c.dModel + 2 * n * c.hidden + c.tokens * c.experts + 2 * c.tokens * c.dModel
        return elements * c.dtype.byteSize + parameterBytes
    }

    /// The dense line's: the hidden activations before and after GELU (2·N·H), `y` and `dx` (N·D each),
    /// and the parameter gradients.
    public static func denseMustKeepBytes(_ c: MoELayerBenchConfig, parameterBytes: Int) -> Int {
        let n = c.tokens * c.topK
        return (2 * n * c.hidden + 2 * n * c.dModel) * c.dtype.byteSize + parameterBytes
    }

    /// Peak bytes of one forward + backward beyond what was allocated before it.
    static func peakBytes(_ device: Device, _ layer: (Tensor) -> Tensor, _ parameters: [Parameter], _ x: Tensor, _ dy: Tensor) -> Int {
        let backend = Backends.backend(for: device)
        for p in parameters { p.grad = nil }
        let input = x.detached().requiringGradient()
        backend.synchronize()
        let before = backend.memoryStatistics.allocated
        Backends.resetPeakMemory(device)
        layer(input).backward(dy)
        backend.synchronize()
        let peak = backend.memoryStatistics.peak
        for p in parameters { p.grad = nil }
        return max(0, peak - before)
    }

    /// The dense line's six GEMMs, row-major, on pre-made random operands through the backend's GEMM
    /// primitive (one cuBLAS call on CUDA, nothing allocated in the timed region): each timed alone, and
    /// the six chained in one timed region. With W1 [H, D] and W2 [D, H] as `Linear` stores them: fc1
    /// X·W1ᵀ, fc2 A·W2ᵀ, fc2's dA = dY·W2 and dW2 = dYᵀ·A, fc1's dX = dH·W1 and dW1 = dHᵀ·X.
    static func denseGemmMilliseconds(_ c: MoELayerBenchConfig, rows n: Int, device: Device, generator g: inout RandomGenerator)
        -> (alone: [Double], chained: Double) {
        let d = c.dModel, h = c.hidden
        // (a shape, b shape, transposeA, transposeB, out shape)
        let problems: [([Int], [Int], Bool, Bool, [Int])] = [
            ([n, d], [h, d], false, true, [n, h]),   // fc1 forward
            ([n, h], [d, h], false, true, [n, d]),   // fc2 forward
            ([n, d], [d, h], false, false, [n, h]),  // fc2 backward: dA
            ([n, d], [n, h], true, false, [d, h]),   // fc2 backward: dW2
            ([n, h], [h, d], false, false, [n, d]),  // fc1 backward: dX
            ([n, h], [n, d], true, false, [h, d]),   // fc1 backward: dW1
        ]
        let backend = Backends.backend(for: device)
        let gemms: [() -> Void] = problems.map { aShape, bShape, transposeA, transposeB, outShape in
            let a = Tensor.randomNormal(aShape, dtype: c.dtype, device: device, generator: &g)
            let b = Tensor.randomNormal(bShape, dtype: c.dtype, device: device, generator: &g)
            let out = Tensor.empty(outShape, dtype: c.dtype, device: device)
            return { backend.matmul(a, b, out, transposeA: transposeA, transposeB: transposeB, alpha: 1, beta: 0) }
        }
        let alone = gemms.map { gemm in medianMilliseconds(device, c, { _ in }) { _ in gemm() } }
        let chained = medianMilliseconds(device, c, { _ in }) { _ in gemms.forEach { $0() } }
        return (alone, chained)
    }

    /// Median milliseconds of `body(i)` over `iterations` after `warmup` untimed ones, with `prepare(i)`
    /// run untimed before each: CUDA events around `body` on a GPU (device time only), the host clock
    /// around `body` and a synchronize on the CPU.
    static func medianMilliseconds(_ device: Device, _ c: MoELayerBenchConfig, _ prepare: (Int) -> Void,
                                   _ body: (Int) -> Void) -> Double {
        let backend = Backends.backend(for: device)
        var times: [Double] = []
        for i in 0..<(c.warmup + c.iterations) {
            prepare(i)
            let ms: Double
            if let cuda = backend as? CUDABackend {
                ms = (try? cuda.measureMilliseconds { body(i) }) ?? .nan
            } else {
                backend.synchronize()
                let clock = ContinuousClock()
                let t = clock.measure { body(i); backend.synchronize() }
                ms = Double(t.components.seconds) * 1e3 + Double(t.components.attoseconds) * 1e-15
            }
            if i >= c.warmup { times.append(ms) }
        }
        return times.sorted()[times.count / 2]
    }
}
