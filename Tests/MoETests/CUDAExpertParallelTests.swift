import Distributed
import TestSupport
import Testing
@testable import MoE
import NN
@testable import Tensors

/// The expert-parallel path on a GPU with an NCCL group of one rank (NCCL refuses two ranks on one
/// GPU; several GPUs are the multi-GPU runs' work): the count all-to-all, the all-to-all-v of rows and
/// the expert-major reorder through NCCL must leave the layer's output and every gradient exactly
/// those of the local exchange, in float32 and bfloat16.
@Suite("Expert parallelism on CUDA, one NCCL rank", .enabled(if: Device.cudaAvailable), .serialized)
struct CUDAExpertParallelTests {
    @Test(arguments: [DType.float32, .bfloat16])
    func allToAllExchangeOfOneRankEqualsTheLocalExchange(_ dtype: DType) throws {
        let gpu = Device.cuda(0), (d, h, n, k, t) = (32, 48, 8, 2, 200)
        let group = try NCCLProcessGroup(device: gpu, name: "expert-parallel")
        func run(_ exchange: (any TokenExchange)?) -> [[Double]] {
            var g = RandomGenerator(seed: 17)
            let gate = TopKGate(dModel: d, globalExpertCount: n, topK: k, generator: &g)
            let experts = BatchedExperts(localExpertCount: n, dModel: d, hidden: h, generator: &g)
            let layer = MoELayer(dModel: d, gate: gate, experts: experts, exchange: exchange)
            layer.move(to: gpu)
            layer.cast(to: dtype)
            var inputs = RandomGenerator(seed: 18)
            let x = Tensor.randomNormal([t, d], generator: &inputs).cast(to: dtype).to(gpu).requiringGradient()
            let u = Tensor.randomNormal([t, d], generator: &inputs).cast(to: dtype).to(gpu)
            let out = layer(x)
            (out * u).sum().backward()
            return [out.doubles(), x.grad!.doubles()] + layer.parameters().map { $0.grad!.doubles() }
        }
        let local = run(nil), exchanged = run(AllToAllExchange(group: group, localExpertCount: n))
        #expect(local.count == exchanged.count)
        for (i, (a, b)) in zip(exchanged, local).enumerated() {
            #expect(a == b, "\(dtype): value \(i) differs between the NCCL exchange and the local one")
        }
    }

    /// The device side of routing the global batch (`GlobalBatch`): per-choice routed counts (masked
    /// column plans) and the capacity offsets summed from every rank's counts, on the GPU exactly as
    /// on the CPU (the multi-rank exchange itself is covered by the thread-rank tests).
    @Test func globalBatchCountsAndOffsetsMatchTheCPU() {
        let gpu = Device.cuda(0), (w, k, n, t) = (3, 2, 6, 500)
        var g = RandomGenerator(seed: 19)
        let expert = Tensor((0..<(t * k)).map { _ in Int32(Double(g.nextUniform()) * Double(n + 1)) - 1 }, shape: [t, k])
        let mask = Tensor((0..<(t * k)).map { _ in g.nextUniform() - 0.3 }, shape: [t, k])
        let perChoice = GlobalBatch.routedCountsPerChoice(expert, expertCount: n, slotMask: mask)
        #expect(GlobalBatch.routedCountsPerChoice(expert.to(gpu), expertCount: n, slotMask: mask.to(gpu)).int32s() == perChoice.int32s())
        let counts = Tensor((0..<(w * k * n)).map { _ in Float(Int(g.nextUniform() * 300)) }, shape: [w, k * n])
        for priority in [RoutingPriority.tokenMajor, .choiceMajor] {
            for r in 0..<w {
                let cpu = GlobalBatch.capacityOffset(counts, rank: r, topK: k, priority: priority).int32s()
                let cuda = GlobalBatch.capacityOffset(counts.to(gpu), rank: r, topK: k, priority: priority).int32s()
                #expect(cuda == cpu, "\(priority) rank \(r)")
            }
        }
    }
}
