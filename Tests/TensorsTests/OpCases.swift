import TestSupport
@testable import Tensors

/// One differentiable op, described once: inputs and the function of them. The gradient checks
/// here and the CPU-vs-GPU checks iterate this table (PyTorch's OpInfo pattern).
struct OpCase: CustomStringConvertible, Sendable {
    let name: String
    let inputs: @Sendable () -> [Tensor]
    let apply: @Sendable ([Tensor]) -> Tensor
    var description: String { name }
}

let ids = Tensor([2, 0, 2, 3, -1, 1] as [Int32])
let targets = Tensor([1, 4, -100, 0, 2] as [Int32])

let opCases: [OpCase] = {
    var c: [OpCase] = []
    func add(_ name: String, _ inputs: @escaping @Sendable () -> [Tensor], _ f: @escaping @Sendable ([Tensor]) -> Tensor) {
        c.append(OpCase(name: name, inputs: inputs, apply: f))
    }
    let a = { randn([3, 4], seed: 1) }, b = { randn([3, 4], seed: 2) }
    add("add", { [a(), b()] }) { $0[0] + $0[1] }
    add("sub", { [a(), b()] }) { $0[0] - $0[1] }
    add("mul", { [a(), b()] }) { $0[0] * $0[1] }
    add("div", { [a(), positive([3, 4], seed: 3)] }) { $0[0] / $0[1] }
    add("add row broadcast", { [a(), randn([4], seed: 4)] }) { $0[0] + $0[1] }
    add("mul row broadcast", { [a(), randn([4], seed: 4)] }) { $0[0] * $0[1] }
    add("sub column broadcast", { [a(), randn([3], seed: 5)] }) { $0[0] - $0[1] }
    add("div column broadcast", { [a(), positive([3, 1], seed: 6)] }) { $0[0] / $0[1] }
    add("mul scalar tensor", { [a(), randn([1], seed: 7)] }) { $0[0] * $0[1] }
    add("scalar ops", { [positive([3, 4], seed: 8)] }) { (2.5 - $0[0] * 3 + 1) / 2 + 1.5 / $0[0] }
    add("neg", { [a()] }) { -$0[0] }
    add("exp", { [a()] }) { $0[0].exp() }
    add("log", { [positive([3, 4], seed: 9)] }) { $0[0].log() }
    add("sqrt", { [positive([3, 4], seed: 10)] }) { $0[0].sqrt() }
    add("tanh", { [a()] }) { $0[0].tanh() }
    add("relu", { [a()] }) { $0[0].relu() }
    add("sigmoid", { [a()] }) { $0[0].sigmoid() }
    add("silu", { [a()] }) { $0[0].silu() }
    add("gelu tanh", { [a()] }) { $0[0].gelu(approximate: true) }
    add("gelu erf", { [a()] }) { $0[0].gelu(approximate: false) }
    add("square", { [a()] }) { $0[0].squared() }
    add("reciprocal", { [positive([3, 4], seed: 11)] }) { $0[0].reciprocal() }
    add("abs", { [a()] }) { $0[0].abs() }
    add("erf", { [randn([3, 4], seed: 42, scale: 1.5)] }) { $0[0].erf() }
    add("softplus", { [randn([3, 4], seed: 43, scale: 3)] }) { $0[0].softplus() }
    // An exact 0 (where relu and |x| have kinks: softplus' = ½ there) and tails far enough that eˣ
    // overflows float32 if the overflow-safe form is lost.
    add("softplus at 0 and ±100", {
        [Tensor([-100, -3, -0.5, 0, 0.5, 3, 100, 1.2, -1.7, 0.1, 2.2, -0.01] as [Double], shape: [3, 4])]
    }) { $0[0].softplus() }
    add("normal CDF", { [randn([3, 4], seed: 44, scale: 2)] }) { $0[0].normalCDF() }
    add("logsumexp", { [randn([2, 3, 5], seed: 45, scale: 2)] }) { $0[0].logSumExp(axis: -1) }
    // Shifted by 100: e^100 overflows float32, so the CPU-vs-CUDA check sees a lost max-shift.
    add("logsumexp of large logits", { [randn([4, 6], seed: 46, shift: 100)] }) { $0[0].logSumExp() }
    // As many rows as columns: the per-row maximum must not broadcast as a row.
    add("logsumexp of a square matrix", { [randn([4, 4], seed: 47, scale: 3)] }) { $0[0].logSumExp() }
    add("slice last axis", { [randn([2, 3, 5], seed: 47)] }) { $0[0].slice(lastAxis: 1..<4).exp() }
    add("slice first and last column", { [randn([3, 5], seed: 48)] }) { x in
        x[0].slice(lastAxis: 0..<1) * x[0].slice(lastAxis: 4..<5).squared()
    }
    add("tanh, length not a multiple of 4", { [randn([5, 3], seed: 40)] }) { $0[0].tanh() }
    add("gelu of an unaligned row view", { [randn([7, 3], seed: 41)] }) { $0[0].rows(1..<6).gelu() }
    add("matmul", { [randn([3, 5], seed: 12), randn([5, 4], seed: 13)] }) { $0[0].matmul($0[1]) }
    add("matmul Aᵀ", { [randn([5, 3], seed: 12), randn([5, 4], seed: 13)] }) { $0[0].matmul($0[1], transposeA: true) }
    add("matmul Bᵀ", { [randn([3, 5], seed: 12), randn([4, 5], seed: 13)] }) { $0[0].matmul($0[1], transposeB: true) }
    add("matmul AᵀBᵀ", { [randn([5, 3], seed: 12), randn([4, 5], seed: 13)] }) { $0[0].matmul($0[1], transposeA: true, transposeB: true) }
    add("matmul batched", { [randn([2, 3, 5], seed: 14), randn([2, 5, 4], seed: 15)] }) { $0[0].matmul($0[1]) }
    add("matmul batched Bᵀ", { [randn([2, 3, 5], seed: 14), randn([2, 4, 5], seed: 15)] }) { $0[0].matmul($0[1], transposeB: true) }
    add("matmul batched Aᵀ", { [randn([2, 5, 3], seed: 14), randn([2, 5, 4], seed: 15)] }) { $0[0].matmul($0[1], transposeA: true) }
    add("matmul 3-D × shared 2-D", { [randn([2, 3, 5], seed: 16), randn([4, 5], seed: 17)] }) { $0[0].matmul($0[1], transposeB: true) }
    add("linear with bias", { [randn([4, 5], seed: 50), randn([3, 5], seed: 51), randn([3], seed: 52)] }) {
        linear($0[0], weight: $0[1], bias: $0[2])
    }
    add("linear, GELU, bias, 3-D input", { [randn([2, 3, 5], seed: 53), randn([4, 5], seed: 54), randn([4], seed: 55)] }) {
        linear($0[0], weight: $0[1], bias: $0[2], activation: .geluTanh)
    }
    add("linear, GELU, no bias", { [randn([4, 5], seed: 56), randn([3, 5], seed: 57)] }) {
        linear($0[0], weight: $0[1], activation: .geluTanh)
    }
    add("GELU feed-forward", {
        [randn([4, 5], seed: 58), randn([6, 5], seed: 59), randn([6], seed: 60), randn([5, 6], seed: 61), randn([5], seed: 62)]
    }) { geluFeedForward($0[0], weight1: $0[1], bias1: $0[2], weight2: $0[3], bias2: $0[4]) }
    add("GELU feed-forward, no biases, 3-D input", { [randn([2, 3, 4], seed: 63), randn([5, 4], seed: 64), randn([4, 5], seed: 65)] }) {
        geluFeedForward($0[0], weight1: $0[1], bias1: nil, weight2: $0[2], bias2: nil)
    }
    add("sum", { [a()] }) { $0[0].sum() }
    add("mean", { [a()] }) { $0[0].mean() }
    add("sum last axis", { [randn([2, 3, 4], seed: 18)] }) { $0[0].sum(axis: -1) }
    add("mean last axis", { [a()] }) { $0[0].mean(axis: -1) }
    add("max last axis", { [a()] }) { $0[0].max(axis: -1) }
    add("sum rows", { [a()] }) { $0[0].sumRows() }
    add("softmax", { [randn([3, 5], seed: 19)] }) { $0[0].softmax() }
    add("log-softmax", { [randn([3, 5], seed: 20)] }) { $0[0].logSoftmax() }
    add("layer norm", { [randn([3, 6], seed: 21), randn([6], seed: 22), randn([6], seed: 23)] }) {
        layerNorm($0[0], weight: $0[1], bias: $0[2])
    }
    add("layer norm without affine", { [randn([4, 5], seed: 24, scale: 2, shift: 1)] }) { layerNorm($0[0], weight: nil, bias: nil) }
    add("embedding (repeats, -1)", { [randn([5, 3], seed: 25)] }) { embedding($0[0], ids.to($0[0].device)) }
    add("index add", { [randn([5, 3], seed: 26), randn([6, 3], seed: 27)] }) { $0[0].indexAdd(rows: ids.to($0[0].device), $0[1]) }
    add("top-k values", { [randn([3, 6], seed: 28)] }) { $0[0].topK(3).values }
    add("gather last axis", { [randn([3, 6], seed: 29)] }) { x in
        x[0].gather(lastAxis: Tensor([0, 5, 2, 2, 1, -1] as [Int32], shape: [3, 2], device: x[0].device))
    }
    add("cross-entropy (ignore)", { [randn([5, 6], seed: 30)] }) { crossEntropy($0[0], targets: targets.to($0[0].device)) }
    add("concat axis 0", { [randn([2, 3], seed: 31), randn([1, 3], seed: 32)] }) { Tensor.concat($0, axis: 0) }
    add("concat axis -1", { [randn([2, 3], seed: 31), randn([2, 2], seed: 32)] }) { Tensor.concat($0, axis: -1) }
    add("split axis 0", { [randn([4, 3], seed: 33)] }) { x in
        let p = x[0].split([1, 3], axis: 0)
        return p[0].sum() * p[1].sum() + p[1].squared().sum()
    }
    add("split axis -1", { [randn([3, 5], seed: 34)] }) { x in
        let p = x[0].split([2, 3], axis: -1)
        return p[0].exp().sum() + p[1].squared().sum() * p[0].sum()
    }
    add("reshape", { [a()] }) { $0[0].reshaped([2, -1]).softmax() }
    add("rows view", { [randn([4, 3], seed: 35)] }) { $0[0].rows(1..<3).exp() }
    add("transpose", { [randn([2, 3, 4], seed: 36)] }) { $0[0].transposed().softmax() }
    add("causal mask", { [randn([2, 3, 4], seed: 37)] }) { $0[0].causalMasked(value: -3).softmax() }
    add("dropout (fixed seed)", { [a()] }) { x in
        var g = RandomGenerator(seed: 5)
        return dropout(x[0], p: 0.3, training: true, generator: &g)
    }
    add("shared input used twice", { [a()] }) { ($0[0] * $0[0]).tanh() + $0[0] }
    return c
}()
