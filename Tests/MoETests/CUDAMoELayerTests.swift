import TestSupport
import Testing
@testable import MoE
import NN
@testable import Tensors

/// One MoE MLP configuration run on the CPU and on the GPU.
struct GPULayerCase: CustomTestStringConvertible, Sendable {
    let name: String
    let gate: GateSpec
    var capacity = CapacityFactor()
    var randomRouting = true
    var jitter: SwitchJitter?
    var balance: RoutingBalance?
    var score = RouterScore.softmax
    var sharedExperts = 0
    let topK: Int
    let experts: Int
    let tokens: Int
    let training: Bool
    /// Whether the CPU run must drop slots by capacity (the capacity is below the routed slots).
    var drops = false
    /// Whether the slot mask must route some second choices nowhere (GShard's random routing).
    var masks = false
    var testDescription: String { name }
}

/// The whole MoE layer (gate, routing plan, dispatch, grouped-GEMM experts, combine, backward) on the
/// GPU against the CPU backend in float32, from identical modules: parameters built on the CPU from
/// one seed, one copy moved to the GPU. Gates with randomness (GShard's random routing, Switch's
/// jitter) draw from generators in the same state on both sides, and the Philox streams give the
/// same uniform numbers on both backends. GPU allocations are poisoned with NaN.
@Suite("MoE layer on CUDA vs CPU", .enabled(if: Device.cudaAvailable), .serialized)
struct CUDAMoELayerTests {
    let gpu = Device.cuda(0)

    static let cases = [
        GPULayerCase(name: "top-2", gate: .topK, topK: 2, experts: 8, tokens: 96, training: true),
        GPULayerCase(name: "top-1, 64 experts (some empty)", gate: .topK, topK: 1, experts: 64, tokens: 24, training: true),
        GPULayerCase(name: "GShard training (random routing)", gate: .gshard, topK: 2, experts: 8, tokens: 96, training: true, masks: true),
        GPULayerCase(name: "GShard training, capacity factor 0.5", gate: .gshard, capacity: CapacityFactor(training: 0.5),
                     randomRouting: false, topK: 2, experts: 8, tokens: 96, training: true, drops: true),
        GPULayerCase(name: "GShard eval", gate: .gshard, topK: 2, experts: 8, tokens: 96, training: false),
        GPULayerCase(name: "Switch training (jitter), capacity factor 0.8", gate: .switch, capacity: CapacityFactor(training: 0.8), topK: 1,
                     experts: 8, tokens: 96, training: true, drops: true),
        GPULayerCase(name: "Switch training (logit jitter)", gate: .switch, jitter: .logits(epsilon: 0.1), topK: 1,
                     experts: 4, tokens: 64, training: true),
        GPULayerCase(name: "Switch eval", gate: .switch, topK: 1, experts: 8, tokens: 96, training: false),
        GPULayerCase(name: "top-2, bias balancing, sigmoid scores, 2 shared experts", gate: .topK, balance: .bias, score: .sigmoid,
                     sharedExperts: 2, topK: 2, experts: 8, tokens: 96, training: true),
        GPULayerCase(name: "GShard, bias balancing", gate: .gshard, randomRouting: false, balance: .bias, topK: 2, experts: 8,
                     tokens: 96, training: true),
        GPULayerCase(name: "expert choice training, cf 2", gate: .expertChoice, capacity: CapacityFactor(training: 2, eval: 2), topK: 2,
                     experts: 8, tokens: 96, training: true),
        GPULayerCase(name: "expert choice eval (top-2)", gate: .expertChoice, capacity: CapacityFactor(training: 2, eval: 2), topK: 2,
                     experts: 8, tokens: 96, training: false),
    ]

    func relativeError(_ a: [Double], _ b: [Double]) -> Double {
        guard a.count == b.count else { return .infinity }
        let scale = max(b.map { Swift.abs($0) }.max() ?? 0, 1e-6)
        return zip(a, b).map { $0.isNaN || $1.isNaN ? .infinity : Swift.abs($0 - $1) }.max().map { $0 / scale } ?? 0
    }

    /// Output, input gradient and every parameter gradient (zeros where none) by name, and the load.
    func run(_ layer: MoELayer, _ x: Tensor, _ upstream: Tensor, on device: Device) -> (values: [(String, [Double])], load: LoadStatistics) {
        let xl = x.to(device).detached().requiringGradient()
        let result = layer.forward(xl)
        let out = result.output
        (out * upstream.to(device)).sum().backward()
        var values = [("output", out.doubles()), ("input gradient", xl.grad!.doubles())]
        for (name, p) in layer.namedParameters() {
            values.append((name + " gradient", p.grad?.doubles() ?? [Double](repeating: 0, count: p.value.count)))
        }
        return (values, result.load)
    }

    @Test(arguments: cases)
    func layerMatchesTheCPU(_ c: GPULayerCase) {
        CUDABackend.poisonAllocations = true
        defer { CUDABackend.poisonAllocations = false }
        let d = 32, h = 48
        func make() -> MoELayer {
            var g = RandomGenerator(seed: 2024)
            let layer = MoELayer.mlp(dModel: d, hidden: h, expertCount: c.experts, topK: c.topK, gate: c.gate, capacityFactor: c.capacity,
                                     balance: c.balance, score: c.score, dtype: .float32, generator: &g)
            if c.sharedExperts > 0 { layer.sharedExperts = MLP(d, hidden: c.sharedExperts * h, initStd: 0.1, generator: &g) }
            // A bias that changes some choices (a trained one would be of this size).
            if let bias = (layer.gate as? any BiasBalancedGate)?.expertBias {
                bias.value = Tensor((0..<c.experts).map { Float($0 % 3) * 0.05 - 0.05 })
            }
            (layer.gate as? GShardGate)?.randomRouting = c.randomRouting
            if let jitter = c.jitter { (layer.gate as! SwitchGate).jitter = jitter }
            layer.train(c.training)
            return layer
        }
        let cpuLayer = make(), gpuLayer = make()
        gpuLayer.move(to: gpu)
        var g = RandomGenerator(seed: 7)
        let x = Tensor.randomNormal([c.tokens, d], generator: &g), upstream = Tensor.randomNormal([c.tokens, d], generator: &g)

        let cpu = run(cpuLayer, x, upstream, on: .cpu)
        let cuda = run(gpuLayer, x, upstream, on: gpu)
        // The routing decisions must agree exactly (float32 logits that differ in the last bits pick
        // the same experts here); everything else within float32 GEMM tolerance.
        #expect(cuda.load == cpu.load, "\(c.name): load \(cuda.load) vs CPU \(cpu.load)")
        if c.drops { #expect(cpu.load.keptSlots < cpu.load.routedSlots, "\(c.name): the case should drop slots") }
        if c.masks { #expect(cpu.load.routedSlots < c.tokens * c.topK, "\(c.name): random routing should drop second choices") }
        if c.experts == 64 { #expect(cpu.load.keptCounts.contains(0), "\(c.name): the case should leave an expert empty") }
        #expect(cuda.values.map(\.0) == cpu.values.map(\.0))
        for ((name, a), (_, b)) in zip(cuda.values, cpu.values) {
            let e = relativeError(a, b)
            #expect(e <= 1e-4, "\(c.name): \(name) relative error \(e)")
        }
    }

    /// The routing plan a GShard gate makes on the GPU equals the CPU's, field by field.
    @Test func gshardPlanMatchesTheCPU() {
        func make() -> GShardGate {
            var g = RandomGenerator(seed: 99)
            return GShardGate(dModel: 16, globalExpertCount: 16, trainingCapacityFactor: 0.9, generator: &g)
        }
        let cpuGate = make(), gpuGate = make()
        gpuGate.move(to: gpu)
        var g = RandomGenerator(seed: 100)
        let x = Tensor.randomNormal([500, 16], generator: &g)
        let a = cpuGate.route(x).plan!, b = gpuGate.route(x.to(gpu)).plan!
        #expect(b.keptExpert.int32s() == a.keptExpert.int32s())
        #expect(b.counts.int32s() == a.counts.int32s())
        #expect(b.rowOfSlot.int32s() == a.rowOfSlot.int32s())
        #expect(b.tokenOfRow.int32s() == a.tokenOfRow.int32s())
    }
}
