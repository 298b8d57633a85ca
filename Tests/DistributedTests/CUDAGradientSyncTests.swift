import NN
import Tensors
import Testing
@testable import Distributed

/// The gradient sync on a GPU, over an NCCL group of one (NCCL refuses two ranks on one GPU): the
/// buckets' copies, flags and views work on device memory and leave the gradients of a one-rank
/// average unchanged; the global norm matches the one-rank clipping.
@Suite("Gradient sync on CUDA", .serialized, .enabled(if: Device.cudaAvailable))
struct CUDAGradientSyncTests {
    static func parameters() -> [(name: String, parameter: Parameter)] {
        func p(_ values: [Double]) -> Parameter { Parameter(Tensor(values, shape: [values.count], dtype: .float32, device: .cuda(0))) }
        return [("a", p([0.1, -0.2, 0.3, 0.4])), ("b", p([0.5, 0.25, -1, 2])), ("unused", p([1, 2])), ("e", p([0.3, 0.1, -0.4, 0.2]))]
    }

    static func loss(_ ps: [(name: String, parameter: Parameter)]) -> Tensor {
        let v = Dictionary(uniqueKeysWithValues: ps.map { ($0.name, $0.parameter.value) })
        return (v["e"]! * (v["a"]! + v["b"]! * v["b"]!).tanh()).sum() + (v["a"]! * v["e"]!).sum()
    }

    @Test func oneRankNCCLSyncLeavesGradientsAndNormAsOneRankComputesThem() throws {
        let plain = Self.parameters()
        Self.loss(plain).backward()
        let plainNorm = clipGradNorm(plain.map(\.parameter), maxNorm: 1e9)
        let synced = Self.parameters()
        let world = try NCCLProcessGroup(device: .cuda(0), name: "dp-test")
        let sync = try GradientSync(parameters: synced, world: world, bucketBytes: 20)
        sync.backward(Self.loss(synced))
        for ((name, p), (_, q)) in zip(synced, plain) {
            #expect(p.grad?.scalars() == q.grad?.scalars(), "\(name): synced \(String(describing: p.grad?.scalars())), plain \(String(describing: q.grad?.scalars()))")
            #expect(p.grad == nil || p.grad!.device == .cuda(0))
        }
        #expect(abs(sync.globalGradNorm() - plainNorm) <= 1e-6 * plainNorm)
    }
}
