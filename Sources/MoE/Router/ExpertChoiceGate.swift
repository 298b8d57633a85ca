import NN
import Tensors

// Notation: T tokens, d model width, N experts in all, C tokens per expert, k = round(cf) slots per
// token in evaluation.

/// Expert-choice routing (Zhou et al. 2022): the experts pick the tokens.
///
/// `S = softmax(x W_gᵀ + b_g)` over the experts, `[T, N]`. In training every expert takes the `C`
/// tokens with the largest values in its column of `S`, `C = min(T, ceil(cf · T / N))` (ties go to
/// the lower token index), so every expert is exactly full and no balance loss is needed; a token's
/// output is `Σ_{e chose t} S[t, e] · expert_e(x_t)`: some tokens get several experts, some none (the
/// residual path carries those).
///
/// As a `GateOutput` the choice is a `[T, N]` table, column `e` holding `e` where expert `e` chose
/// the token and `-1` elsewhere, with `S` as the scores: the routing plan's stable counting sort
/// then puts each expert's `C` tokens in token order, and the combine weighs them by `S[t, e]`.
///
/// **Not causal**: a token's routing depends on the other tokens of the batch, later ones included.
/// Evaluation (`eval()`: `fastmoe eval`, `generate`, validation) therefore routes each token to the
/// top `k = round(cf)` experts of the same scores, weighted by `S` (not renormalised). In training,
/// `GateOutput.routingDisagreement` reports the fraction of those evaluation slots that the
/// expert-choice routing did not choose.
///
/// The selection runs on the host: `S` is downloaded once per forward (`T·N` values), a second sync
/// point besides the layer's count download (no device top-`C` primitive exists yet; CUDA's top-k
/// is for `k ≤ 32`). On the CPU this costs nothing.
/// ```swift
/// let gate = ExpertChoiceGate(dModel: 512, globalExpertCount: 8, capacityFactor: 2, generator: &g)
/// ```
public final class ExpertChoiceGate: Module, Gate, @unchecked Sendable {
    public let linear: Linear
    public let globalExpertCount: Int
    /// `cf`: the mean number of experts per token.
    public let capacityFactor: Double
    public var zLossWeight: Double

    /// The evaluation routing's `k = round(cf)` (in 1...N); also the mean experts per token in training.
    public var topK: Int { max(1, min(globalExpertCount, Int(capacityFactor.rounded()))) }

    public init(dModel: Int, globalExpertCount: Int, capacityFactor: Double = 2, zLossWeight: Double = 0,
                dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) {
        guarantee(globalExpertCount >= 1 && capacityFactor > 0 && capacityFactor.isFinite,
                  "ExpertChoiceGate: \(globalExpertCount) experts and capacity factor \(capacityFactor) must be positive")
        linear = Linear(dModel, globalExpertCount, device: device, dtype: dtype, generator: &generator)
        self.globalExpertCount = globalExpertCount
        self.capacityFactor = capacityFactor
        self.zLossWeight = zLossWeight
    }

    /// `C = min(T, ceil(cf · T / N))`: the tokens each expert takes from a batch of `tokens`.
    public func capacity(tokens: Int) -> Int {
        min(tokens, CapacityFactor(training: capacityFactor, eval: capacityFactor)
            .capacity(tokens: tokens, topK: 1, experts: globalExpertCount, training: true))
    }

    public func route(_ x: Tensor) -> GateOutput {
        let t = x.shape[0], n = globalExpertCount, device = x.device
        let z = GateMath.routerPrecision(linear(x))
        let s = z.softmax()
        let zLoss = RouterZLoss.weighted(z, zLossWeight)
        guard isTraining else {
            let (score, expert) = s.topK(topK)
            return GateOutput(expert: expert, score: score, zLoss: zLoss, probabilities: s)
        }
        // The one download of the scores: the selection below is a per-expert sort on the host.
        let host = s.doubles()
        let c = capacity(tokens: t)
        var chosen = [Double](repeating: -1, count: t * n)
        for e in 0..<n {
            for token in Self.largest(c, of: t, { host[$0 * n + e] }) { chosen[token * n + e] = 1 }
        }
        // The evaluation routing of the same scores: per token, the k largest (ties to the lower expert).
        let k = topK
        var missed = 0
        for token in 0..<t {
            for e in Self.largest(k, of: n, { host[token * n + $0] }) where chosen[token * n + e] < 0 { missed += 1 }
        }
        let table = Tensor((0..<(t * n)).map { Int32($0 % n) }, shape: [t, n], device: device)
        let mask = Tensor(chosen, shape: [t, n], dtype: s.dtype, device: device)
        let plan = routingPlan(table, expertCount: n, slotMask: mask)
        return GateOutput(expert: plan.keptExpert, score: s, zLoss: zLoss, plan: plan, probabilities: s,
                          routingDisagreement: t == 0 ? 0 : Double(missed) / Double(t * k))
    }

    /// The `count` indices of `0..<n` with the largest `value`, largest first, ties to the lower index.
    private static func largest(_ count: Int, of n: Int, _ value: (Int) -> Double) -> ArraySlice<Int> {
        Array(0..<n).sorted { a, b in
            let va = value(a), vb = value(b)
            return va != vb ? va > vb : a < b
        }.prefix(count)
    }
}
