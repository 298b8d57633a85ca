import TestSupport
#if canImport(Glibc)
import Glibc
#endif
@testable import MoE
import NN
@testable import Tensors


/// The float64 identity: with it as the gate weight (and a zero bias), the logits are the input.
func identity(_ n: Int) -> Tensor {
    Tensor((0..<(n * n)).map { $0 / n == $0 % n ? 1.0 : 0.0 }, shape: [n, n])
}

/// Makes `linear` compute `z = x` (d = N).
func setIdentity(_ linear: Linear) {
    linear.weight.value = identity(linear.outFeatures)
    linear.bias?.value = Tensor.zeros([linear.outFeatures], dtype: .float64)
}

func softmax(_ v: [Double]) -> [Double] {
    let m = v.max()!, e = v.map { exp($0 - m) }, s = e.reduce(0, +)
    return e.map { $0 / s }
}

/// Row `b` of a `[B, n]` host array.
func row(_ v: [Double], _ b: Int, _ n: Int) -> [Double] { Array(v[(b * n)..<(b * n + n)]) }

/// Indices of the k largest (largest first, ties to the lower index), by sorting.
func topIndices(_ v: [Double], _ k: Int) -> [Int] {
    Array(v.indices.sorted { v[$0] != v[$1] ? v[$0] > v[$1] : $0 < $1 }.prefix(k))
}

func maxDifference(_ a: [Double], _ b: [Double]) -> Double {
    precondition(a.count == b.count, "maxDifference: \(a.count) vs \(b.count) values")
    return zip(a, b).map { Swift.abs($0 - $1) }.max() ?? 0
}

/// The expert of the tests: Linear(d→h) → GELU → Linear(h→d), as a plain module.
final class MLPExpert: Module, Layer, @unchecked Sendable {
    let fc1: Linear
    let fc2: Linear

    init(dModel: Int, hidden: Int, generator g: inout RandomGenerator) {
        fc1 = Linear(dModel, hidden, dtype: .float64, generator: &g)
        fc2 = Linear(hidden, dModel, dtype: .float64, generator: &g)
    }

    func callAsFunction(_ x: Tensor) -> Tensor { fc2(fc1(x).gelu()) }
}

/// Top-k with a capacity (token-major drops): a user-written gate, so any k can drop slots.
final class CapacityTopKGate: Module, Gate, @unchecked Sendable {
    let linear: Linear
    let globalExpertCount: Int
    let topK: Int
    let capacity: Int

    init(dModel: Int, globalExpertCount: Int, topK: Int, capacity: Int, generator g: inout RandomGenerator) {
        linear = Linear(dModel, globalExpertCount, dtype: .float64, generator: &g)
        self.globalExpertCount = globalExpertCount
        self.topK = topK
        self.capacity = capacity
    }

    func route(_ x: Tensor) -> GateOutput {
        let (values, expert) = linear(x).topK(topK)
        let plan = routingPlan(expert, expertCount: globalExpertCount, capacity: capacity, priority: .tokenMajor)
        return GateOutput(expert: plan.keptExpert, score: values.softmax(), plan: plan)
    }
}

/// Batched experts holding the same weights as a list of `MLPExpert`s.
func batchedCopy(of list: [MLPExpert]) -> BatchedExperts {
    func stack(_ ts: [Tensor], _ shape: [Int]) -> Tensor { Tensor(ts.flatMap { $0.doubles() }, shape: [ts.count] + shape) }
    let first = list[0]
    let fc1 = GroupedLinear(weight: stack(list.map { $0.fc1.weight.value }, first.fc1.weight.shape),
                            bias: stack(list.map { $0.fc1.bias!.value }, first.fc1.bias!.shape))
    let fc2 = GroupedLinear(weight: stack(list.map { $0.fc2.weight.value }, first.fc2.weight.shape),
                            bias: stack(list.map { $0.fc2.bias!.value }, first.fc2.bias!.shape))
    return BatchedExperts(fc1: fc1, fc2: fc2, activation: .gelu)
}


extension MoELayer {
    /// The batched experts `MoELayer.mlp` builds.
    var batched: BatchedExperts { experts as! BatchedExperts }
}
