import Distributed
import NN
import Tensors

// Notation: T tokens, d model width, N experts in all, k slots per token.

/// Noisy top-k gating (Shazeer et al. 2017; FastMoE's `NoisyGate`).
///
/// Training: `σ = softplus(x·w_noise) + 0.01`, `noisy = x·w_gate + ε·σ` with `ε ~ N(0, 1)`; eval:
/// `noisy = x·w_gate`. The top `k+1` of `noisy` are taken; the scores are the softmax of the top `k`.
/// Aux loss: `cv²(importance) + cv²(load)`, `importance_e = Σ_b gates[b, e]`,
/// `load_e = Σ_b Φ((clean − thr) / σ)` with `thr` the (k+1)-th largest noisy value where `e` is in the
/// top k, else the k-th. The load term is skipped in eval (σ = 0) and when `k == N` (it is constant).
/// The sums are taken in at least float32. With a `statisticsGroup` (`GlobalBalanceStatistics`) the
/// sums are the global batch's; with a `batchGroup` (`GlobalBatchRouting`) `ε` is drawn at each
/// token's global index.
/// ```swift
/// let gate = NoisyTopKGate(dModel: 512, globalExpertCount: 8, topK: 2, generator: &g)
/// ```
public final class NoisyTopKGate: Module, Gate, BiasBalancedGate, @unchecked Sendable {
    /// `[d, N]`: clean logits `x · wGate`. Init as FastMoE: U(−1/√N, 1/√N) (kaiming_uniform, a = √5, on `[d, N]`).
    public let wGate: Parameter
    /// `[d, N]`: noise scale logits `x · wNoise`, same init.
    public let wNoise: Parameter
    public let globalExpertCount: Int
    public let topK: Int
    public var zLossWeight: Double
    /// `.aux` (the default: the loss above), `.bias` (auxiliary-loss-free: no loss, a routing bias) or `.none`.
    public let balance: RoutingBalance
    /// `[N]`, with `balance: .bias`.
    public let expertBias: Buffer?
    public var biasUpdateRate: Double
    /// The ranks whose tokens `importance` and `load` sum over (`GlobalBalanceStatistics`); nil = this rank's.
    public var statisticsGroup: (any ProcessGroup)?
    /// The ranks whose tokens `ε` is drawn for (`GlobalBatchRouting`); nil = this rank's.
    public var batchGroup: (any ProcessGroup)?
    /// The source of `ε` (found by reflection: checkpoints save its state for an exact resume).
    public let randomSource: RandomSource
    public var generator: RandomGenerator {
        get { randomSource.generator }
        set { randomSource.generator = newValue }
    }

    public init(dModel: Int, globalExpertCount expertCount: Int, topK: Int = 2, zLossWeight: Double = 0,
                balance: RoutingBalance = .aux, biasUpdateRate: Double = RouterBias.defaultUpdateRate,
                dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) {
        guarantee(topK >= 1 && topK <= expertCount, "NoisyTopKGate: topK \(topK) must be in 1...\(expertCount)")
        let bound = 1 / Double(expertCount).squareRoot()
        wGate = Parameter(Tensor.randomUniform([dModel, expertCount], low: -bound, high: bound, dtype: dtype, device: device, generator: &generator))
        wNoise = Parameter(Tensor.randomUniform([dModel, expertCount], low: -bound, high: bound, dtype: dtype, device: device, generator: &generator))
        globalExpertCount = expertCount
        self.topK = topK
        self.zLossWeight = zLossWeight
        self.balance = balance
        expertBias = RouterBias.buffer(balance, experts: expertCount, device: device)
        self.biasUpdateRate = biasUpdateRate
        randomSource = RandomSource(GateMath.childGenerator(&generator))
    }

    public func route(_ x: Tensor) -> GateOutput {
        let k = topK, n = globalExpertCount, b = x.shape[0]
        let clean = x.matmul(wGate.value.cast(to: x.dtype))
        var noisy = clean
        var sigma: Tensor?, batchTokenCounts: Tensor?
        if isTraining {
            let batch = GlobalBatch(group: batchGroup, tokens: b)
            let s = x.matmul(wNoise.value.cast(to: x.dtype)).softplus() + 0.01
            let epsilon = Tensor.randomNormal([b, n], dtype: x.dtype, device: x.device, generator: &randomSource.generator,
                                              firstElement: batch.firstToken * n)
            noisy = clean + epsilon * s
            sigma = s
            batchTokenCounts = batch.tokenCounts(device: x.device)
        }
        let m = min(k + 1, n)
        // With a bias, the k+1 are the largest of softmax(noisy) + b, in that order (the load
        // estimate's thresholds are then the noisy logits of the biased choice: an approximation).
        let (top, topIndex): (Tensor, Tensor)
        if expertBias != nil {
            let index = GateMath.choose(noisy.softmax(), k: m, bias: expertBias)
            (top, topIndex) = (noisy.gather(lastAxis: index), index)
        } else {
            (top, topIndex) = noisy.topK(m)
        }
        let (values, expert) = m > k ? (top.slice(lastAxis: 0..<k), topIndex.slice(lastAxis: 0..<k)) : (top, topIndex)
        let score = values.softmax()
        var aux: Tensor?
        if balance == .aux {
            var sums = [GateMath.routerPrecision(score.scattered(lastAxis: expert, width: n)).sumRows()]   // importance
            if let sigma, k < n {
                let thresholdIn = top.slice(lastAxis: k..<(k + 1))        // the (k+1)-th largest: the bar an expert in the top k must stay above
                let thresholdOut = top.slice(lastAxis: (k - 1)..<k)   // the k-th largest: the bar an expert outside must pass
                let isIn = withoutGradient { Tensor.ones([b, k], dtype: x.dtype, device: x.device).scattered(lastAxis: expert, width: n) }
                let probIn = ((clean - thresholdIn) / sigma).normalCDF()
                let probOut = ((clean - thresholdOut) / sigma).normalCDF()
                sums.append(GateMath.routerPrecision(isIn * probIn + (1 - isIn) * probOut).sumRows())   // load
            }
            aux = GateMath.cvSquared(sums, over: statisticsGroup)
        }
        return GateOutput(expert: expert, score: score, auxLoss: aux, zLoss: RouterZLoss.weighted(clean, zLossWeight),
                          probabilities: noisy.softmax(), batchTokenCounts: batchTokenCounts)
    }
}
