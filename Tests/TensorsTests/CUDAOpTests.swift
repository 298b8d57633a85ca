import TestSupport
import Testing
@testable import Tensors

/// The op table run on the CPU and on the GPU from the same fresh random float32 inputs: outputs and
/// every input gradient must agree (GPU allocations poisoned with NaN, so unwritten elements fail).
@Suite("CPU vs CUDA", .enabled(if: Device.cudaAvailable), .serialized)
struct CUDAOpTests {
    let gpu = Device.cuda(0)

    /// Output and input gradients of `op` for inputs in `dtype` on `device` (upstream gradient fixed).
    func run(_ op: OpCase, _ inputs: [Tensor], on device: Device, dtype: DType) -> [[Double]] {
        let leaves = inputs.map { $0.cast(to: dtype).to(device).detached().requiringGradient() }
        let out = op.apply(leaves)
        var g = RandomGenerator(seed: 11)
        let w = Tensor.randomNormal(out.shape, dtype: .float32, generator: &g).cast(to: dtype).to(device)
        (out * w).sum().backward()
        return [out.doubles()] + leaves.map { $0.grad?.doubles() ?? [] }
    }

    /// max |a - b| / max |b| over all elements (b the CPU reference).
    func relativeError(_ a: [Double], _ b: [Double]) -> Double {
        guard a.count == b.count else { return .infinity }
        let scale = max(b.map { Swift.abs($0) }.max() ?? 0, 1e-6)
        return zip(a, b).map { $0.isNaN || $1.isNaN ? .infinity : Swift.abs($0 - $1) }.max().map { $0 / scale } ?? 0
    }

    @Test(arguments: opCases)
    func float32MatchesCPU(_ op: OpCase) {
        CUDABackend.poisonAllocations = true
        defer { CUDABackend.poisonAllocations = false }
        let inputs = op.inputs()
        let cpu = run(op, inputs, on: .cpu, dtype: .float32)
        let cuda = run(op, inputs, on: gpu, dtype: .float32)
        let tolerance = op.name.hasPrefix("matmul") ? 1e-4 : 1e-5
        for (i, (c, r)) in zip(cuda, cpu).enumerated() {
            let e = relativeError(c, r)
            #expect(e <= tolerance, "\(op.name) \(i == 0 ? "output" : "gradient of input \(i - 1)"): relative error \(e)")
        }
    }

    static let bfloat16Cases = opCases.filter { c in
        ["add", "mul row broadcast", "div", "exp", "tanh", "gelu tanh", "gelu erf", "silu", "matmul", "matmul Bᵀ",
         "matmul batched", "softmax", "log-softmax", "layer norm", "sum last axis", "cross-entropy (ignore)",
         "embedding (repeats, -1)", "transpose", "causal mask", "erf", "softplus", "normal CDF", "logsumexp",
         "slice last axis"].contains(c.name)
    }

    /// bfloat16 on the GPU against float32 on the CPU over the same (bf16-rounded) inputs.
    @Test(arguments: bfloat16Cases)
    func bfloat16MatchesCPUFloat32(_ op: OpCase) {
        let inputs = op.inputs().map { $0.cast(to: .bfloat16).cast(to: .float32) }
        let cpu = run(op, inputs, on: .cpu, dtype: .float32)
        let cuda = run(op, inputs, on: gpu, dtype: .bfloat16)
        for (i, (c, r)) in zip(cuda, cpu).enumerated() {
            let e = relativeError(c, r)
            #expect(e <= 2e-2, "\(op.name) bf16 \(i == 0 ? "output" : "gradient of input \(i - 1)"): relative error \(e)")
        }
    }

    @Test func randomNumbersMatchTheCPU() {
        var a = RandomGenerator(seed: 1234), b = RandomGenerator(seed: 1234)
        let u = Tensor.randomUniform([100_003], low: -2, high: 5, generator: &a).scalars()
        #expect(u == Tensor.randomUniform([100_003], low: -2, high: 5, device: gpu, generator: &b).scalars())
        let n = Tensor.randomNormal([100_003], generator: &a).scalars()
        let ng = Tensor.randomNormal([100_003], device: gpu, generator: &b).scalars()
        #expect(zip(n, ng).allSatisfy { Swift.abs($0 - $1) <= 1e-5 * max(1, Swift.abs($0)) })
        let m = Tensor.empty([4099], device: gpu)
        m.backend.random(m, .dropoutMask(p: 0.3), stream: RandomStream(seed: 5, offset: 9))
        let mc = Tensor.empty([4099])
        mc.backend.random(mc, .dropoutMask(p: 0.3), stream: RandomStream(seed: 5, offset: 9))
        #expect(m.scalars() == mc.scalars())
        // From a first element (an expert-parallel rank's tokens): the CPU's values at the same positions.
        let first = 3 * 4099 + 1
        let uf = Tensor.randomUniform([4099], generator: &a, firstElement: first).scalars()
        #expect(uf == Tensor.randomUniform([4099], device: gpu, generator: &b, firstElement: first).scalars())
        let nf = Tensor.randomNormal([4099], generator: &a, firstElement: first).scalars()
        let nfg = Tensor.randomNormal([4099], device: gpu, generator: &b, firstElement: first).scalars()
        #expect(zip(nf, nfg).allSatisfy { Swift.abs($0 - $1) <= 1e-5 * max(1, Swift.abs($0)) })
    }

    /// 1000 values take the 8-a-thread float32 ↔ bfloat16 kernels, 1003 the one-a-thread one.
    @Test func castsAndCreationMatchTheCPU() {
        var g = RandomGenerator(seed: 3)
        for count in [1000, 1003] {
            let x = Tensor.randomNormal([count], std: 100, generator: &g)
            for (from, to) in [(DType.float32, DType.bfloat16), (.float32, .int32), (.bfloat16, .float32), (.int32, .float32)] {
                let cpu = x.cast(to: from).cast(to: to)
                let cuda = x.cast(to: from).to(gpu).cast(to: to)
                #expect(cpu.bytes() == cuda.bytes(), "cast \(from) → \(to) of \(count)")
            }
        }
        #expect(Tensor.arange(10, start: 3, step: 2, device: gpu).int32s() == (0..<10).map { Int32(3 + 2 * $0) })
        #expect(Tensor.full([5], 2.5, dtype: .bfloat16, device: gpu).scalars() == [2.5, 2.5, 2.5, 2.5, 2.5])
    }

    /// The embedding backward at a training step's size: 8192 ids over 256 rows, a third of them on
    /// one row and every seventh -1. Bit-reproducible on the GPU (atomics would add in whatever order
    /// they land), and the CPU's sums to the dtype's rounding.
    @Test(arguments: [DType.float32, .bfloat16])
    func embeddingGradientIsBitReproducible(_ dtype: DType) {
        var g = RandomGenerator(seed: 31)
        let id: [Int32] = (0..<8192).map { (i: Int) -> Int32 in
            if i % 7 == 0 { return -1 }
            return Int32(i % 3 == 0 ? 5 : (i * 37) % 256)
        }
        let ids = Tensor(id, shape: [8192])
        let table = Tensor.randomNormal([256, 512], generator: &g).cast(to: dtype)
        let upstream = Tensor.randomNormal([8192, 512], generator: &g).cast(to: dtype)
        func gradient(on device: Device) -> [Double] {
            let t = (device == .cpu ? table.cast(to: .float32) : table.to(device)).detached().requiringGradient()
            embedding(t, ids.to(device)).backward(device == .cpu ? upstream.cast(to: .float32) : upstream.to(device))
            return t.grad!.doubles()
        }
        let first = gradient(on: gpu), second = gradient(on: gpu)
        #expect(first == second, "two runs of the same embedding backward differ")
        let error = relativeError(first, gradient(on: .cpu))
        #expect(error < (dtype == .float32 ? 1e-5 : 1e-2), "\(dtype): relative error \(error) against the CPU")
    }

    /// `castMany` (one launch for every float32 → bfloat16 pair) against one `cast` a tensor, bit for
    /// bit: a single value, sizes around the 8-value vectors and the 65,536-value chunks, a view at an
    /// odd row (not 16-byte aligned), and a pair of other dtypes (cast one by one).
    @Test func castManyIsOneCastATensor() {
        var g = RandomGenerator(seed: 41)
        let matrix = Tensor.randomNormal([1001, 3], device: gpu, generator: &g)
        var xs = [1, 7, 8, 65_536 + 3, 200_000].map { Tensor.randomNormal([$0], device: gpu, generator: &g) }
        xs.append(matrix.rows(1..<1001))
        xs.append(Tensor.randomNormal([9], device: gpu, generator: &g).cast(to: .bfloat16))
        let targets: [DType] = xs.map { $0.dtype == .float32 ? .bfloat16 : .float32 }
        let outs = zip(xs, targets).map { Tensor.empty($0.shape, dtype: $1, device: gpu) }
        Backends.backend(for: gpu).castMany(xs, to: outs)
        for (i, (x, out)) in zip(xs, outs).enumerated() {
            #expect(out.doubles() == x.cast(to: out.dtype).doubles(), "tensor \(i): \(x.shape) \(x.dtype)")
        }
    }

    @Test func topKMatchesTheCPU() {
        var g = RandomGenerator(seed: 4)
        let x = Tensor.randomNormal([333, 64], generator: &g)
        let (v, i) = x.topK(8), (vg, ig) = x.to(gpu).topK(8)
        #expect(v.scalars() == vg.scalars())
        #expect(i.int32s() == ig.int32s())
    }

    @Test func largeRowsAndReductions() {
        var g = RandomGenerator(seed: 5)
        let x = Tensor.randomNormal([37, 5000], generator: &g)
        let xg = x.to(gpu)
        #expect(relativeError(xg.softmax().doubles(), x.softmax().doubles()) < 1e-5)
        #expect(relativeError(xg.sum(axis: -1).doubles(), x.sum(axis: -1).doubles()) < 1e-5)
        #expect(relativeError(xg.sumRows().doubles(), x.sumRows().doubles()) < 1e-5)
        #expect(relativeError(xg.max(axis: -1).doubles(), x.max(axis: -1).doubles()) == 0)
    }

    /// Few long rows split across blocks (`reduce_last_partials` and `_finish`): a whole-tensor sum
    /// and max of a million values, and two rows of 300,001 (a partial last part), on fresh random
    /// data against the CPU, in float32 and bfloat16.
    @Test(arguments: [DType.float32, .bfloat16])
    func longRowReductionsSplitAcrossBlocks(dtype: DType) {
        CUDABackend.poisonAllocations = true
        defer { CUDABackend.poisonAllocations = false }
        var g = RandomGenerator(seed: 6)
        for shape in [[1_000_000], [2, 300_001]] {
            let x = Tensor.randomNormal(shape, generator: &g).cast(to: dtype).cast(to: .float32)
            let xg = x.cast(to: dtype).to(gpu)
            let tolerance = dtype == .bfloat16 ? 1e-2 : 1e-5
            #expect(relativeError(xg.sum(axis: -1).doubles(), x.sum(axis: -1).doubles()) < tolerance, "sum \(shape) \(dtype)")
            #expect(relativeError(xg.max(axis: -1).doubles(), x.max(axis: -1).doubles()) == 0, "max \(shape) \(dtype)")
            if shape.count == 1 {
                #expect(relativeError([xg.sum().item()], [x.sum().item()]) < tolerance, "sum() \(dtype)")
            }
        }
    }

    /// The multi-tensor ops of gradient clipping over chunks of 65536 (tensors of 70,000 and 200,001
    /// elements span several, a partial last one), a small and an empty tensor, on fresh random
    /// data against the CPU, in float32 and bfloat16; every element of the scaled tensors written.
    @Test(arguments: [DType.float32, .bfloat16])
    func sumOfSquaresAndScaleInPlaceMatchTheCPU(dtype: DType) {
        var g = RandomGenerator(seed: 7)
        let cpu = [[70_000], [3, 5], [0], [200_001]].map { Tensor.randomNormal($0, generator: &g).cast(to: dtype).cast(to: .float32) }
        let gpuTensors = cpu.map { $0.cast(to: dtype).to(gpu) }
        let expected = sumOfSquares(cpu).item()
        let total = sumOfSquares(gpuTensors)
        #expect(total.dtype == .float32)
        #expect(Swift.abs(total.item() - expected) < 1e-5 * expected, "\(dtype): \(total.item()) against \(expected)")
        scaleInPlace(cpu, by: 0.375)
        scaleInPlace(gpuTensors, by: 0.375)
        for (c, x) in zip(cpu, gpuTensors) {
            #expect(relativeError(x.doubles(), c.doubles()) < (dtype == .bfloat16 ? 1e-2 : 1e-6), "\(c.shape) \(dtype)")
        }
    }

    /// Every row-kernel path: warp-per-row at each register width (cols up to 1024) and block-per-row beyond.
    @Test(arguments: [1, 31, 33, 100, 513, 1000, 1024, 1025, 3000])
    func rowKernelsAtEveryWidth(_ cols: Int) {
        CUDABackend.poisonAllocations = true
        defer { CUDABackend.poisonAllocations = false }
        var g = RandomGenerator(seed: UInt64(cols))
        let x = Tensor.randomNormal([301, cols], std: 2, generator: &g)
        let w = Tensor.randomNormal([cols], generator: &g), b = Tensor.randomNormal([cols], generator: &g)
        let up = Tensor.randomNormal([301, cols], generator: &g)
        let functions: [(String, ([Tensor]) -> Tensor)] = [
            ("softmax", { $0[0].softmax() }), ("log-softmax", { $0[0].logSoftmax() }),
            ("layer norm", { layerNorm($0[0], weight: $0[1], bias: $0[2]) }), ("sum rows", { $0[0].sumRows() }),
        ]
        for (name, f) in functions {
            var results: [[[Double]]] = []
            for device in [Device.cpu, gpu] {
                let leaves = [x, w, b].map { $0.to(device).detached().requiringGradient() }
                let out = f(leaves)
                let upstream = out.shape == up.shape ? up.to(device) : Tensor.ones(out.shape, device: device)
                (out * upstream).sum().backward()
                results.append([out.doubles()] + leaves.map { $0.grad?.doubles() ?? [] })
            }
            for (i, (c, r)) in zip(results[1], results[0]).enumerated() {
                let e = relativeError(c, r)
                #expect(e <= 1e-5, "\(name) cols \(cols) \(i == 0 ? "output" : "gradient \(i - 1)"): relative error \(e)")
            }
        }
    }

    /// erf and its derivative over the whole range that matters (|x| ≤ 6: beyond, erf is ±1 in
    /// float64), in float32 and float64, at a length that exercises the 4-wide path and the tail.
    @Test(arguments: [DType.float32, .float64])
    func erfMatchesTheCPUOverItsRange(_ dtype: DType) {
        CUDABackend.poisonAllocations = true
        defer { CUDABackend.poisonAllocations = false }
        let n = 10_003
        let x = Tensor((0..<n).map { -6 + 12 * Double($0) / Double(n - 1) }, shape: [n]).cast(to: dtype)
        var g = RandomGenerator(seed: 12)
        let up = Tensor.randomNormal([n], dtype: dtype, generator: &g)
        var results: [[Double]] = []
        for device in [Device.cpu, gpu] {
            let leaf = x.to(device).detached().requiringGradient()
            let y = leaf.erf()
            (y * up.to(device)).sum().backward()
            results.append(y.doubles() + (leaf.grad?.doubles() ?? []))
        }
        #expect(results[1].count == 2 * n)
        // Relative to max(1, |CPU|): a few ulp of CUDA's erff/expf against glibc's.
        let e = zip(results[1], results[0]).map { $0.isNaN || $1.isNaN ? .infinity : Swift.abs($0 - $1) / max(1, Swift.abs($1)) }.max() ?? .infinity
        #expect(e <= (dtype == .float32 ? 1e-6 : 1e-14), "erf \(dtype): relative difference \(e)")
    }

    /// Several parameters (one over a chunk boundary, one decayed, one not) in one call, plain and
    /// with the schedule and clipping read from the device, against the CPU.
    @Test(arguments: [false, true])
    func adamWMatchesTheCPU(scheduled: Bool) {
        var g = RandomGenerator(seed: 6)
        let sizes = [1000, 70_000, 3]
        func tensors(on device: Device, _ values: [[Tensor]]) -> [AdamWTensors] {
            values.enumerated().map { i, t in
                AdamWTensors(parameter: t[0].to(device), gradient: t[1].to(device), m: t[2].to(device), v: t[3].to(device),
                             weightDecay: i == 2 ? 0 : 0.1)
            }
        }
        let values = sizes.map { n in
            [Tensor.randomNormal([n], generator: &g), Tensor.randomNormal([n], generator: &g),
             Tensor.randomNormal([n], std: 0.1, generator: &g), Tensor.randomUniform([n], generator: &g)]
        }
        let before = values.map { $0[0].doubles() }   // the CPU's tensors are updated in place
        let cpu = tensors(on: .cpu, values), cuda = tensors(on: gpu, values)
        let step = AdamWStep(learningRate: 1e-3, beta1: 0.9, beta2: 0.95, epsilon: 1e-8, step: 3)
        func schedule(_ device: Device) -> ScheduledStep? {
            guard scheduled else { return nil }
            let values = ScheduledStep.values(learningRate: 2e-3, beta1: 0.9, beta2: 0.95, step: 4).map(Double.init)
            return ScheduledStep(schedule: Tensor(values, shape: [3], dtype: .float32, device: device),
                                 gradientSquares: Tensor([40_000] as [Double], shape: [1], dtype: .float32, device: device), maxNorm: 50)
        }
        cpu[0].parameter.backend.adamW(cpu, step, scheduled: schedule(.cpu))
        cuda[0].parameter.backend.adamW(cuda, step, scheduled: schedule(gpu))
        for ((c, r), before) in zip(zip(cuda, cpu), before) {
            #expect(relativeError(c.parameter.doubles(), r.parameter.doubles()) < 1e-6)
            #expect(relativeError(c.m.doubles(), r.m.doubles()) < 1e-6)
            #expect(relativeError(c.v.doubles(), r.v.doubles()) < 1e-6)
            #expect(c.parameter.doubles() != before, "every parameter moved")
        }
    }

    /// A training-like loop of forward, backward and update must not grow the reserved pool.
    @Test func allocatorDoesNotGrowOverATrainingLoop() {
        var g = RandomGenerator(seed: 7)
        let w1 = Tensor.randomNormal([256, 512], std: 0.05, device: gpu, generator: &g).requiringGradient()
        let w2 = Tensor.randomNormal([512, 256], std: 0.05, device: gpu, generator: &g).requiringGradient()
        var reservedAfterWarmup = 0
        for step in 0..<1000 {
            let x = Tensor.randomNormal([64, 256], device: gpu, generator: &g)
            let loss = x.matmul(w1).gelu().matmul(w2).squared().mean()
            loss.backward()
            w1.grad = nil
            w2.grad = nil
            if step == 10 { reservedAfterWarmup = w1.backend.memoryStatistics.reserved }
        }
        w1.backend.synchronize()
        let stats = w1.backend.memoryStatistics
        #expect(stats.reserved == reservedAfterWarmup, "reserved grew from \(reservedAfterWarmup) to \(stats.reserved)")
        #expect(stats.peak >= stats.allocated && stats.allocated > 0)
    }
}
