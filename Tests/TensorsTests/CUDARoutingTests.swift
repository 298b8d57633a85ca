import TestSupport
import CUDA
import Testing
@testable import Tensors

/// A random `[T, k]` routing table over `N` experts: a share of `-1` slots, a share sent to one hot
/// expert (skew), the rest uniform over experts `0..<N-1`, so expert `N-1` is always empty (N > 1).
struct RoutingTable: CustomTestStringConvertible, Sendable {
    let tokens: Int, k: Int, experts: Int, skew: Double, unrouted: Double
    var testDescription: String { "T=\(tokens) k=\(k) N=\(experts) skew=\(skew)" }

    func values(seed: UInt64) -> (expert: [Int32], mask: [Float]) {
        var g = RandomGenerator(seed: seed)
        let uniform = max(experts - 1, 1)
        let expert = (0..<(tokens * k)).map { _ -> Int32 in
            let u = Double(g.nextUniform())
            if u < unrouted { return -1 }
            if u < unrouted + skew { return Int32(experts / 2) }
            return Int32(min(Int(Double(g.nextUniform()) * Double(uniform)), uniform - 1))
        }
        let mask = (0..<(tokens * k)).map { _ in g.nextUniform() - 0.3 }
        return (expert, mask)
    }
}

/// The MoE primitives on the GPU against the CPU backend (their reference, itself checked against the
/// definitions in RoutingTests): the routing plan bit for bit, grouped linear layers within float
/// tolerances. GPU allocations are poisoned with NaN, so an element a kernel forgets to write fails.
@Suite("CUDA routing primitives vs CPU", .enabled(if: Device.cudaAvailable), .serialized)
struct CUDARoutingTests {
    let gpu = Device.cuda(0)

    static let tables = [
        RoutingTable(tokens: 1, k: 1, experts: 1, skew: 0, unrouted: 0),
        RoutingTable(tokens: 7, k: 2, experts: 4, skew: 0, unrouted: 0.2),
        RoutingTable(tokens: 300, k: 2, experts: 8, skew: 0, unrouted: 0.1),
        RoutingTable(tokens: 1000, k: 1, experts: 64, skew: 0.9, unrouted: 0.05),
        RoutingTable(tokens: 2048, k: 2, experts: 256, skew: 0.3, unrouted: 0.05),
        RoutingTable(tokens: 3001, k: 3, experts: 5000, skew: 0.2, unrouted: 0.1),    // one warp a block
        RoutingTable(tokens: 300, k: 2, experts: 20000, skew: 0.5, unrouted: 0.1),    // counters in global memory
        RoutingTable(tokens: 50_000, k: 4, experts: 256, skew: 0, unrouted: 0.01),
        RoutingTable(tokens: 100_000, k: 2, experts: 64, skew: 0.8, unrouted: 0.02),
    ]

    /// "" when equal, else the first differing index and values.
    func difference(_ a: [Int32], _ b: [Int32]) -> String {
        guard a.count == b.count else { return "\(a.count) values, expected \(b.count)" }
        guard let i = a.indices.first(where: { a[$0] != b[$0] }) else { return "" }
        return "first difference at \(i): \(a[i]), expected \(b[i])"
    }

    /// Every output of two routing plans is the same, int for int.
    func expectSamePlan(_ cuda: RoutingPlan, _ cpu: RoutingPlan, _ label: String) {
        for (name, c, r) in [("kept", cuda.keptExpert, cpu.keptExpert), ("counts", cuda.counts, cpu.counts),
                             ("rowOfSlot", cuda.rowOfSlot, cpu.rowOfSlot), ("slotOfRow", cuda.slotOfRow, cpu.slotOfRow),
                             ("tokenOfRow", cuda.tokenOfRow, cpu.tokenOfRow), ("expertOfRow", cuda.expertOfRow, cpu.expertOfRow)] {
            let d = difference(c.int32s(), r.int32s())
            #expect(d.isEmpty, "\(label): \(name): \(d)")
        }
    }

    @Test(arguments: tables)
    func routingPlanIsBitExact(_ table: RoutingTable) {
        CUDABackend.poisonAllocations = true
        defer { CUDABackend.poisonAllocations = false }
        let (expertValues, maskValues) = table.values(seed: UInt64(table.tokens * 31 + table.experts))
        let shape = [table.tokens, table.k], slots = table.tokens * table.k
        let expert = Tensor(expertValues, shape: shape), mask = Tensor(maskValues, shape: shape)
        let expertGPU = expert.to(gpu), maskGPU = mask.to(gpu)
        let small = max(1, slots / table.experts / 2)
        for capacity in [nil, 0, 1, small, slots] as [Int?] {
            for priority in [RoutingPriority.tokenMajor, .choiceMajor] {
                for useMask in [false, true] {
                    let cpu = routingPlan(expert, expertCount: table.experts, capacity: capacity, priority: priority,
                                          slotMask: useMask ? mask : nil)
                    let cuda = routingPlan(expertGPU, expertCount: table.experts, capacity: capacity, priority: priority,
                                           slotMask: useMask ? maskGPU : nil)
                    expectSamePlan(cuda, cpu, "\(table.testDescription) C=\(capacity.map(String.init) ?? "nil") \(priority) mask=\(useMask)")
                }
            }
        }
    }

    /// The capacity offset (seats taken elsewhere, per choice and expert) on the GPU: bit for bit the
    /// CPU plan, for random offsets around the capacity, both priorities, with and without a mask.
    @Test(arguments: [tables[1], tables[2], tables[3], tables[4], tables[7]])
    func capacityOffsetIsBitExact(_ table: RoutingTable) {
        CUDABackend.poisonAllocations = true
        defer { CUDABackend.poisonAllocations = false }
        let (expertValues, maskValues) = table.values(seed: UInt64(table.tokens * 17 + table.experts))
        let shape = [table.tokens, table.k], slots = table.tokens * table.k
        let expert = Tensor(expertValues, shape: shape), mask = Tensor(maskValues, shape: shape)
        let capacity = max(2, slots / table.experts)
        var g = RandomGenerator(seed: UInt64(table.experts))
        let offsetValues = (0..<(table.k * table.experts)).map { _ in Int32(Double(g.nextUniform()) * Double(capacity + 2)) }
        let offset = Tensor(offsetValues, shape: [table.k, table.experts])
        for priority in [RoutingPriority.tokenMajor, .choiceMajor] {
            for useMask in [false, true] {
                let cpu = routingPlan(expert, expertCount: table.experts, capacity: capacity, capacityOffset: offset, priority: priority,
                                      slotMask: useMask ? mask : nil)
                let cuda = routingPlan(expert.to(gpu), expertCount: table.experts, capacity: capacity, capacityOffset: offset.to(gpu),
                                       priority: priority, slotMask: useMask ? mask.to(gpu) : nil)
                let label = "\(table.testDescription) C=\(capacity) offset \(priority) mask=\(useMask)"
                expectSamePlan(cuda, cpu, label)
                // The offsets must bite: fewer slots kept than without them.
                let plain = routingPlan(expert, expertCount: table.experts, capacity: capacity, priority: priority, slotMask: useMask ? mask : nil)
                #expect(cpu.keptCounts.int32s().reduce(0, +) < plain.keptCounts.int32s().reduce(0, +), "\(label): the offsets drop nothing")
            }
        }
    }

    @Test func choiceMajorAndMaskOnTheGPU() {
        // Token 0 picks (0, 1), token 1 picks (1, 0); one seat each: the first choices win.
        let expert = Tensor([0, 1, 1, 0] as [Int32], shape: [2, 2]).to(gpu)
        #expect(routingPlan(expert, expertCount: 2, capacity: 1, priority: .choiceMajor).keptExpert.int32s() == [0, -1, 1, -1])
        #expect(routingPlan(expert, expertCount: 2, capacity: 1, priority: .tokenMajor).keptExpert.int32s() == [0, 1, -1, -1])
        // A negative mask routes the slot nowhere, in any float dtype (float64 -1e-300 stays negative).
        for dtype in [DType.float32, .bfloat16, .float64] {
            let mask = Tensor([1, -1e-300, -0.5, 0] as [Double], shape: [2, 2]).cast(to: dtype).to(gpu)
            let plan = routingPlan(expert, expertCount: 2, slotMask: mask)
            let expected: [Int32] = dtype == .float64 ? [0, -1, -1, 0] : [0, 1, -1, 0]   // -1e-300 is -0 in float32 / bfloat16
            #expect(plan.keptExpert.int32s() == expected, "\(dtype)")
            #expect(plan.counts.int32s() == (expected == [0, -1, -1, 0] ? [2, 0, 2, 0] : [2, 1, 2, 1]), "\(dtype)")
        }
    }

    @Test func anEmptyTableHasZeroCounts() {
        CUDABackend.poisonAllocations = true
        defer { CUDABackend.poisonAllocations = false }
        let plan = routingPlan(Tensor.empty([0, 2], dtype: .int32, device: gpu), expertCount: 3, capacity: 1)
        #expect(plan.counts.int32s() == [0, 0, 0, 0, 0, 0])
    }

    // MARK: Grouped GEMMs

    static let groupSizes: [[Int]] = [[5, 0, 17, 3, 0], [0, 0, 40], [8, 8, 8, 8], [1, 2, 0, 3, 4, 5, 6, 0, 7, 8], [33]]

    /// Output and the gradients of x, weight and bias of `groupedLinear` on `device` in `dtype`. Output
    /// width 40 takes the 16-byte vector path of the bias kernel, 21 the element one.
    func groupedLinearRun(_ sizes: [Int], on device: Device, dtype: DType, rounded: Bool, outW: Int = 40, inW: Int = 24) -> [[Double]] {
        let e = sizes.count, rows = sizes.reduce(0, +)
        var g = RandomGenerator(seed: UInt64(rows * 7 + e))
        func input(_ shape: [Int], std: Double = 1) -> Tensor {
            let t = Tensor.randomNormal(shape, std: std, generator: &g)
            return (rounded ? t.cast(to: .bfloat16).cast(to: .float32) : t).cast(to: dtype).to(device)
        }
        let x = input([rows, inW]).requiringGradient(), w = input([e, outW, inW], std: 0.2).requiringGradient()
        let b = input([e, outW]).requiringGradient(), upstream = input([rows, outW])
        let expertOfRow = Tensor(sizes.enumerated().flatMap { Array(repeating: Int32($0.offset), count: $0.element) }).to(device)
        let y = groupedLinear(x, weight: w, bias: b, groupSizes: sizes, expertOfRow: expertOfRow)
        (y * upstream).sum().backward()
        return [y.doubles(), x.grad!.doubles(), w.grad!.doubles(), b.grad!.doubles()]
    }

    func relativeError(_ a: [Double], _ b: [Double]) -> Double {
        guard a.count == b.count else { return .infinity }
        let scale = max(b.map { Swift.abs($0) }.max() ?? 0, 1e-6)
        return zip(a, b).map { $0.isNaN || $1.isNaN ? .infinity : Swift.abs($0 - $1) }.max().map { $0 / scale } ?? 0
    }

    static let names = ["output", "input gradient", "weight gradient", "bias gradient"]

    @Test(arguments: [GroupedGemmStrategy.grouped, .serial, .lanes, .kernel])
    func groupedLinearFloat32MatchesCPU(groupedGemm: GroupedGemmStrategy) {
        CUDABackend.poisonAllocations = true
        CUDABackend.groupedGemmStrategy = groupedGemm
        defer { CUDABackend.poisonAllocations = false; CUDABackend.groupedGemmStrategy = .automatic }
        for sizes in Self.groupSizes {
          for outW in [40, 21] {
            let cpu = groupedLinearRun(sizes, on: .cpu, dtype: .float32, rounded: false, outW: outW)
            let cuda = groupedLinearRun(sizes, on: gpu, dtype: .float32, rounded: false, outW: outW)
            for (i, (c, r)) in zip(cuda, cpu).enumerated() {
                let e = relativeError(c, r)
                #expect(e <= 1e-4, "sizes \(sizes) width \(outW) \(groupedGemm.name): \(Self.names[i]) relative error \(e)")
            }
            // An empty expert's weight gradient is exactly zero (not left as poison).
            let perExpert = outW * 24
            for (ex, n) in sizes.enumerated() where n == 0 {
                #expect(cuda[2][(ex * perExpert)..<((ex + 1) * perExpert)].allSatisfy { $0 == 0 }, "sizes \(sizes): expert \(ex)")
            }
          }
        }
    }

    @Test(arguments: [GroupedGemmStrategy.grouped, .serial, .lanes, .kernel, .wgmma])
    func groupedLinearBFloat16MatchesCPUFloat32(groupedGemm: GroupedGemmStrategy) {
        CUDABackend.poisonAllocations = true
        CUDABackend.groupedGemmStrategy = groupedGemm
        defer { CUDABackend.poisonAllocations = false; CUDABackend.groupedGemmStrategy = .automatic }
        for sizes in Self.groupSizes {
            for outW in [40, 21] {
                let cpu = groupedLinearRun(sizes, on: .cpu, dtype: .float32, rounded: true, outW: outW)
                let cuda = groupedLinearRun(sizes, on: gpu, dtype: .bfloat16, rounded: true, outW: outW)
                for (i, (c, r)) in zip(cuda, cpu).enumerated() {
                    let e = relativeError(c, r)
                    #expect(e <= 2e-2, "sizes \(sizes) width \(outW) \(groupedGemm.name) bf16: \(Self.names[i]) relative error \(e)")
                }
            }
        }
    }

    /// Our grouped kernels at sizes that reach every edge of their tiles: experts of 0, 1, 129 and
    /// 300 rows (several row tiles, none a multiple of 64 or 128), one expert with every row, widths
    /// of three column tiles with a partial last one (264) and a sum of 200 (a partial last K tile
    /// of 32 or 64), on fresh random data, against the CPU; an empty expert's weight gradient
    /// exactly zero. `.wgmma` runs the Hopper kernel in bfloat16 on a compute capability 9.x device
    /// (the test checks that it is the one that ran there), the CUDA-core kernel in float32; its
    /// weight gradient splits the 300- and 517-row experts into chunks (more than 256 rows, over
    /// an even share of 6 tiles' work on 36 or 24 blocks) and sums their partials.
    @Test(arguments: [(DType.float32, GroupedGemmStrategy.kernel), (.bfloat16, .kernel), (.bfloat16, .wgmma)])
    func groupedKernelMatchesTheCPU(dtype: DType, strategy: GroupedGemmStrategy) throws {
        CUDABackend.poisonAllocations = true
        CUDABackend.groupedGemmStrategy = strategy
        defer { CUDABackend.poisonAllocations = false; CUDABackend.groupedGemmStrategy = .automatic }
        if strategy == .wgmma, try CUDA.device(0).computeCapability.major == 9 {
            let backend = try #require(Backends.backend(for: gpu) as? CUDABackend)
            #expect(backend.hopperKernel("grouped_gemm_forward_wgmma") != nil, "a Hopper GPU must run the wgmma kernel")
        }
        let inW = 200, outW = 264, bf16 = dtype == .bfloat16
        for sizes in [[0, 300, 1, 129, 0, 77], [0, 0, 517, 0]] {
            // The shapes must take the kernel, not the lanes it falls back to.
            let weight = Tensor.empty([sizes.count, outW, inW], dtype: dtype, device: gpu)
            #expect(CUDABackend.groupedKernelFits(weight: weight, weight, weight))
            let cpu = groupedLinearRun(sizes, on: .cpu, dtype: .float32, rounded: bf16, outW: outW, inW: inW)
            let cuda = groupedLinearRun(sizes, on: gpu, dtype: dtype, rounded: bf16, outW: outW, inW: inW)
            for (i, (c, r)) in zip(cuda, cpu).enumerated() {
                let e = relativeError(c, r)
                #expect(e <= (bf16 ? 2e-2 : 1e-4), "sizes \(sizes) \(dtype) \(strategy.name): \(Self.names[i]) relative error \(e)")
            }
            let perExpert = outW * inW
            for (ex, n) in sizes.enumerated() where n == 0 {
                #expect(cuda[2][(ex * perExpert)..<((ex + 1) * perExpert)].allSatisfy { $0 == 0 }, "sizes \(sizes): expert \(ex)")
            }
        }
    }

    /// `groupedFeedForward` (both products' epilogues: bias, activation, the activation's backward)
    /// on fresh random data at sizes that reach every tile edge: on our kernels, fused for each
    /// activation an expert can have and unfused for another (tanh); on one GEMM per expert (on the lanes and in turn), GELU through cuBLASLt's
    /// epilogues and ReLU through the unfused primitives. float32 against the CPU; bfloat16 against
    /// the composed layers (`groupedLinear`, the activation, `groupedLinear`) on the GPU in bfloat16
    /// under the same strategy: against float32 arithmetic the bias gradients, sums of hundreds of
    /// terms of both signs, differ by the rounding of their terms alone (6–10% of their largest).
    @Test(arguments: [(DType.float32, GroupedGemmStrategy.kernel), (.bfloat16, .kernel), (.bfloat16, .wgmma),
                      (.float32, .lanes), (.bfloat16, .lanes), (.bfloat16, .serial)])
    func groupedFeedForwardMatchesTheCPU(dtype: DType, strategy: GroupedGemmStrategy) {
        CUDABackend.poisonAllocations = true
        CUDABackend.groupedGemmStrategy = strategy
        defer { CUDABackend.poisonAllocations = false; CUDABackend.groupedGemmStrategy = .automatic }
        let sizes = [0, 300, 1, 129, 0, 77], e = sizes.count, rows = sizes.reduce(0, +), d = 200, h = 264, bf16 = dtype == .bfloat16
        let activations: [UnaryOp] = strategy == .lanes || strategy == .serial ? [.geluTanh, .relu] : [.geluTanh, .geluErf, .relu, .silu, .tanh]
        for activation in activations {
            func run(on device: Device, _ dtype: DType, fused: Bool = true) -> [[Double]] {
                var g = RandomGenerator(seed: 31)
                func input(_ shape: [Int], std: Double = 1) -> Tensor {
                    let t = Tensor.randomNormal(shape, std: std, generator: &g)
                    return (bf16 ? t.cast(to: .bfloat16).cast(to: .float32) : t).cast(to: dtype).to(device)
                }
                let x = input([rows, d]), w1 = input([e, h, d], std: 0.1), b1 = input([e, h]), w2 = input([e, d, h], std: 0.1), b2 = input([e, d])
                let upstream = input([rows, d])
                let leaves = [x, w1, b1, w2, b2].map { $0.requiringGradient() }
                let expertOfRow = Tensor(sizes.enumerated().flatMap { Array(repeating: Int32($0.offset), count: $0.element) }).to(device)
                let y = fused
                    ? groupedFeedForward(leaves[0], weight1: leaves[1], bias1: leaves[2], weight2: leaves[3], bias2: leaves[4],
                                         activation: activation, groupSizes: sizes, expertOfRow: expertOfRow)
                    : groupedLinear(groupedLinear(leaves[0], weight: leaves[1], bias: leaves[2], groupSizes: sizes, expertOfRow: expertOfRow)
                                        .unaryOp(activation),
                                    weight: leaves[3], bias: leaves[4], groupSizes: sizes, expertOfRow: expertOfRow)
                (y * upstream).sum().backward()
                return [y.doubles()] + leaves.map { $0.grad!.doubles() }
            }
            let reference = bf16 ? run(on: gpu, dtype, fused: false) : run(on: .cpu, .float32), cuda = run(on: gpu, dtype)
            for (i, (c, r)) in zip(cuda, reference).enumerated() {
                let error = relativeError(c, r)
                #expect(error <= (bf16 ? 2e-2 : 1e-4),
                        "\(dtype) \(strategy.name) \(activation): \(["output", "x", "W1", "b1", "W2", "b2"][i]) relative error \(error)")
            }
        }
    }

    /// The tile table built on the device from the counts (`grouped_tile_table`) is the uploaded
    /// one, then `(-1, 0)` up to the most tiles the rows can need; and a grouped feed-forward over
    /// device counts (no host sizes: our kernels read that table; the lanes download the sizes)
    /// equals the one over host sizes, to the bit.
    @Test(arguments: [GroupedGemmStrategy.kernel, .lanes])
    func deviceCountsGiveTheHostSizesResults(strategy: GroupedGemmStrategy) throws {
        CUDABackend.poisonAllocations = true
        CUDABackend.groupedGemmStrategy = strategy
        defer { CUDABackend.poisonAllocations = false; CUDABackend.groupedGemmStrategy = .automatic }
        let backend = try #require(Backends.backend(for: gpu) as? CUDABackend)
        for sizes in [[0, 300, 1, 129, 0, 77], [0, 0, 517, 0], [128, 0, 256, 1]] {
            let rows = sizes.reduce(0, +) + 40   // room past the groups, as a layer's T·k rows with drops
            let counts = Tensor(sizes.map(Int32.init)).to(gpu)
            let device = backend.groupTable(RowGroups(counts: counts), rows: rows, tileRows: 128)
            let host = backend.groupTable(RowGroups(sizes: sizes), rows: rows, tileRows: 128)
            func values(_ table: CUDABackend.GroupTable, _ count: Int) -> [Int32] {
                Tensor(storage: table.storage, shape: [count], dtype: .int32, byteOffset: 0).int32s()
            }
            let entries = sizes.count + 1 + 2 * host.rowTiles
            #expect(device.rowTiles == (rows + 127) / 128 + sizes.count)
            let built = values(device, sizes.count + 1 + 2 * device.rowTiles)
            #expect(Array(built[0..<entries]) == values(host, entries), "sizes \(sizes)")
            #expect(built[entries...].enumerated().allSatisfy { $0.element == ($0.offset % 2 == 0 ? -1 : 0) }, "sizes \(sizes)")
        }
        let sizes = [0, 300, 1, 129, 0, 77], d = 200, h = 264, e = sizes.count, rows = sizes.reduce(0, +)
        var g = RandomGenerator(seed: 41)
        func input(_ shape: [Int], std: Double = 1) -> Tensor {
            Tensor.randomNormal(shape, std: std, generator: &g).cast(to: .bfloat16).to(gpu).requiringGradient()
        }
        let x = input([rows, d]), w1 = input([e, h, d], std: 0.1), b1 = input([e, h]), w2 = input([e, d, h], std: 0.1), b2 = input([e, d])
        let expertOfRow = Tensor(sizes.enumerated().flatMap { Array(repeating: Int32($0.offset), count: $0.element) }).to(gpu)
        func run(_ groups: RowGroups) -> [[Double]] {
            for p in [x, w1, b1, w2, b2] { p.grad = nil }
            let y = groupedFeedForward(x, weight1: w1, bias1: b1, weight2: w2, bias2: b2, activation: .geluTanh, groups: groups, expertOfRow: expertOfRow)
            y.sum().backward()
            return [y.doubles()] + [x, w1, b1, w2, b2].map { $0.grad!.doubles() }
        }
        let onDevice = run(RowGroups(counts: Tensor(sizes.map(Int32.init)).to(gpu))), onHost = run(RowGroups(sizes: sizes))
        #expect(onDevice == onHost, "\(strategy.name)")
    }

    /// The router's fused choice on the GPU (`router_topk`, one thread a row) against the CPU's
    /// composed ops, in float32 as the gates run it: the same experts, scores and logit gradients,
    /// for both choices, with and without a routing bias, at 8, 13 and 64 experts.
    @Test(arguments: [RouterChoice.logits, .probabilities])
    func routerTopKMatchesTheCPU(choice: RouterChoice) {
        CUDABackend.poisonAllocations = true
        defer { CUDABackend.poisonAllocations = false }
        for (tokens, experts, k) in [(300, 8, 2), (5, 13, 3), (130, 64, 8)] {
            for biased in [false, true] {
                func run(on device: Device) -> (expert: [Int32], values: [[Double]]) {
                    var g = RandomGenerator(seed: UInt64(tokens + experts + k))
                    let z = Tensor.randomNormal([tokens, experts], generator: &g).to(device).requiringGradient()
                    let bias = Tensor.randomNormal([experts], std: 0.1, generator: &g).to(device)
                    let upstream = Tensor.randomNormal([tokens, k], generator: &g).to(device)
                    let (expert, score) = z.routerTopK(k, by: choice, bias: biased ? bias : nil)
                    (score * upstream).sum().backward()
                    return (expert.int32s(), [score.doubles(), z.grad!.doubles()])
                }
                let cpu = run(on: .cpu), cuda = run(on: gpu)
                let label = "\(choice) T=\(tokens) N=\(experts) k=\(k) bias \(biased)"
                #expect(cuda.expert == cpu.expert, "\(label): experts")
                for (name, (c, r)) in zip(["score", "logit gradient"], zip(cuda.values, cpu.values)) {
                    #expect(relativeError(c, r) <= 1e-5, "\(label): \(name) relative error \(relativeError(c, r))")
                }
            }
        }
    }

    /// A rank that received no tokens: every expert's weight (and bias) gradient is zero, on every
    /// path (the wgmma kernel has no tensor to describe to its copies).
    @Test(arguments: [(DType.float32, GroupedGemmStrategy.automatic), (.bfloat16, .kernel), (.bfloat16, .wgmma), (.bfloat16, .lanes)])
    func weightGradientWithNoRowsIsZero(dtype: DType, groupedGemm: GroupedGemmStrategy) {
        CUDABackend.poisonAllocations = true
        CUDABackend.groupedGemmStrategy = groupedGemm
        defer { CUDABackend.poisonAllocations = false; CUDABackend.groupedGemmStrategy = .automatic }
        let gy = Tensor.empty([0, 16], dtype: dtype, device: gpu), x = Tensor.empty([0, 24], dtype: dtype, device: gpu)
        let out = Tensor.empty([4, 16, 24], dtype: dtype, device: gpu), bias = Tensor.empty([4, 16], dtype: dtype, device: gpu)
        out.moeBackend("test").groupedMatmulWeightGradient(gy, x, groups: RowGroups(sizes: [0, 0, 0, 0]), out, biasGradient: bias)
        #expect(out.doubles() == [Double](repeating: 0, count: 4 * 16 * 24), "\(dtype) \(groupedGemm.name)")
        #expect(bias.doubles() == [Double](repeating: 0, count: 4 * 16), "\(dtype) \(groupedGemm.name)")
    }

    // MARK: Permute and unpermute

    /// Permute, then unpermute with the scores, and the gradients of `x` and `score`, on `device`.
    /// Width 40 takes the 16-byte vector paths of the row kernels, 13 the element ones.
    func permuteRun(_ table: RoutingTable, capacity: Int?, on device: Device, dtype: DType, d: Int = 40) -> [[Double]] {
        let (expertValues, _) = table.values(seed: UInt64(table.tokens + table.k))
        var g = RandomGenerator(seed: UInt64(table.tokens * 3 + table.k))
        func input(_ shape: [Int]) -> Tensor {
            Tensor.randomNormal(shape, generator: &g).cast(to: .bfloat16).cast(to: dtype).to(device).requiringGradient()
        }
        let x = input([table.tokens, d]), score = input([table.tokens, table.k]), upstream = input([table.tokens, d]).detached()
        let plan = routingPlan(Tensor(expertValues, shape: [table.tokens, table.k]).to(device), expertCount: table.experts, capacity: capacity)
        let kept = plan.keptCounts.int32s().reduce(0) { $0 + Int($1) }
        let rows = permuteTokens(x, by: plan).rows(0..<kept)
        let out = unpermuteTokens(rows, by: plan, score: score)
        (out * upstream).sum().backward()
        return [out.doubles(), x.grad!.doubles(), score.grad!.doubles()]
    }

    /// Without a host count the experts get all T·k permuted rows (`TokenDispatcher`): the combine's
    /// backward gives each kept row its score times its token's gradient, as on the CPU, and the
    /// rows past the kept ones exact zeros (the allocator poisons fresh memory).
    @Test(arguments: [DType.float32, .bfloat16])
    func combineGradientCoversEveryRowOfAllSlots(dtype: DType) {
        CUDABackend.poisonAllocations = true
        defer { CUDABackend.poisonAllocations = false }
        let table = RoutingTable(tokens: 333, k: 3, experts: 9, skew: 0.4, unrouted: 0.1)
        let (expertValues, _) = table.values(seed: 5)
        let slots = table.tokens * table.k, d = 40
        func run(on device: Device, _ dtype: DType) -> (rows: [Double], score: [Double], kept: Int) {
            var g = RandomGenerator(seed: 17)
            func input(_ shape: [Int]) -> Tensor {
                Tensor.randomNormal(shape, generator: &g).cast(to: .bfloat16).cast(to: dtype).to(device).requiringGradient()
            }
            let y = input([slots, d]), score = input([table.tokens, table.k]), upstream = input([table.tokens, d]).detached()
            let plan = routingPlan(Tensor(expertValues, shape: [table.tokens, table.k]).to(device), expertCount: table.experts, capacity: 20)
            (unpermuteTokens(y, by: plan, score: score) * upstream).sum().backward()
            return (y.grad!.doubles(), score.grad!.doubles(), plan.keptCounts.int32s().reduce(0) { $0 + Int($1) })
        }
        let cpu = run(on: .cpu, .float32), cuda = run(on: gpu, dtype)
        #expect(cuda.kept == cpu.kept && cuda.kept < slots - 50, "\(dtype): \(cuda.kept) of \(slots) rows kept")
        let tolerance = dtype == .float32 ? 1e-5 : 2e-2
        #expect(relativeError(cuda.rows, cpu.rows) <= tolerance, "\(dtype): row gradients")
        #expect(relativeError(cuda.score, cpu.score) <= tolerance, "\(dtype): score gradients")
        #expect(cuda.rows[(cuda.kept * d)...].allSatisfy { $0 == 0 }, "\(dtype): rows past the kept ones")
    }

    /// The combine and the permutation's backward sum a token's k rows in a fixed order, with no
    /// atomics: the GPU matches the CPU, and two GPU runs agree bit for bit for every k.
    @Test(arguments: [(1, nil), (2, 3), (3, nil), (3, 40), (4, 7)] as [(Int, Int?)])
    func permuteAndUnpermuteMatchTheCPUAndReproduce(k: Int, capacity: Int?) {
        CUDABackend.poisonAllocations = true
        defer { CUDABackend.poisonAllocations = false }
        let table = RoutingTable(tokens: 333, k: k, experts: 9, skew: 0.4, unrouted: 0.1)
        for d in [40, 13] {
            let cpu = permuteRun(table, capacity: capacity, on: .cpu, dtype: .float32, d: d)
            for dtype in [DType.float32, .bfloat16] {
                let first = permuteRun(table, capacity: capacity, on: gpu, dtype: dtype, d: d)
                let second = permuteRun(table, capacity: capacity, on: gpu, dtype: dtype, d: d)
                let label = "k=\(k) C=\(String(describing: capacity)) d=\(d) \(dtype)"
                for (i, name) in ["output", "x gradient", "score gradient"].enumerated() {
                    let e = relativeError(first[i], cpu[i])
                    #expect(e <= (dtype == .float32 ? 1e-5 : 2e-2), "\(label): \(name) relative error \(e)")
                    #expect(first[i] == second[i], "\(label): \(name) differs between two runs")
                }
            }
        }
    }
}
