import NN
import Tensors

// Notation: T tokens, N experts in all, k slots per token, b the per-expert routing bias [N], γ its
// update rate.

/// How a token-choice gate keeps its experts evenly loaded (`--balance`).
public enum RoutingBalance: String, Sendable, CaseIterable {
    /// The gate's balance loss, weighted by `--balance-weight` (the top-k gate gets the Switch/Megatron
    /// loss `N · Σ_e f_e·P_e` with `f_e` over all k slots).
    case aux
    /// Auxiliary-loss-free balancing (Wang et al. 2024; DeepSeek-V3): a per-expert bias added to the
    /// scores for the choice only, moved towards balance after every optimizer step.
    case bias
    /// Nothing: FastMoE's behaviour (its top-k gate can collapse onto a few experts).
    case none
}

/// What the top-k gate's combine weights are computed from (`--score`).
public enum RouterScore: String, Sendable, CaseIterable {
    /// `softmax` over the chosen k logits (FastMoE; equal to the full softmax renormalised over the k).
    case softmax
    /// `sigmoid` of each chosen logit, normalised over the k (DeepSeek-V3).
    case sigmoid
}

/// A gate that can route with a per-expert bias (`--balance bias`): `b` is added to the routing
/// scores for the top-k choice only (the combine weights come from the unbiased scores), and after
/// each optimizer step `b_e += γ · sign(mean load − load_e)` with that step's loads
/// (`LoadMonitor.finishStep()`, which is where loads summed over expert-parallel ranks will come in).
/// ```swift
/// let gate = TopKGate(dModel: 64, globalExpertCount: 8, topK: 2, balance: .bias, generator: &g)
/// gate.updateBias(loads: [900, 10, 10, 10, 10, 10, 10, 10])   // expert 0 down by γ, the others up
/// ```
public protocol BiasBalancedGate: Gate {
    /// `[N]` float32 (a buffer: saved in checkpoints, never touched by the optimizer); nil = no bias.
    var expertBias: Buffer? { get }
    /// `γ`.
    var biasUpdateRate: Double { get }
}

extension BiasBalancedGate {
    /// `b_e += γ · sign(mean load − load_e)` (`sign(0) = 0`) for one step's routed counts `[N]`, in
    /// place (`routingBiasStep`). The step's loads are host integers already (the layer's one
    /// download), so the update is a small upload: nothing waits for the device.
    public func updateBias(loads: [Int]) {
        guard let bias = expertBias else { return }
        guarantee(loads.count == globalExpertCount, "updateBias: \(loads.count) loads for \(globalExpertCount) experts")
        updateBias(routed: Tensor(loads.map { Int32(truncatingIfNeeded: $0) }, shape: [loads.count], device: bias.value.device),
                   skipUnlessFinite: nil)
    }

    /// `updateBias(loads:)` from the step's routed counts on the device (`routed` `[N]` int32): the
    /// bias step of a training step captured once and replayed.
    /// Nothing when `skipUnlessFinite` (the step's squared gradient norm) is not finite, as the
    /// optimizer skips that step.
    public func updateBias(routed: Tensor, skipUnlessFinite squares: Tensor?) {
        guard let bias = expertBias else { return }
        guarantee(routed.count == globalExpertCount, "updateBias: \(routed.count) counts for \(globalExpertCount) experts")
        bias.value.routingBiasStep(routed: routed, rate: biasUpdateRate, skipUnlessFinite: squares)
    }
}

/// The `RouterBias` defaults.
public enum RouterBias {
    /// DeepSeek-V3's γ.
    public static let defaultUpdateRate = 1e-3

    /// A zero `[N]` float32 bias buffer when `balance` is `.bias`.
    static func buffer(_ balance: RoutingBalance, experts: Int, device: Device) -> Buffer? {
        balance == .bias ? Buffer(Tensor.zeros([experts], dtype: .float32, device: device)) : nil
    }
}

extension GateMath {
    /// The experts of each token: the `k` largest of `scores [T, N]` plus the bias, if any (the
    /// bias moves the choice only; ties go to the lower expert). Not differentiable (indices).
    static func choose(_ scores: Tensor, k: Int, bias: Buffer?) -> Tensor {
        withoutGradient {
            guard let bias else { return scores.topK(k).indices }
            return (scores + bias.value.cast(to: scores.dtype)).topK(k).indices
        }
    }

    /// The sequence-wise balance loss of DeepSeek-V3, per sequence then averaged:
    /// `Σ_e f_e · P_e`, `f_e = N/(k·L) · #{t in the sequence : t chose e}`, `P_e = mean_t p'[t, e]`
    /// with `p'` the scores normalised over the experts (`probabilities [S·L, N]`, `expert [S·L, k]`,
    /// `-1` slots ignored). 1 when every sequence spreads evenly.
    static func sequenceBalanceLoss(probabilities p: Tensor, expert: Tensor, sequenceLength l: Int) -> Tensor {
        let t = p.shape[0], n = p.lastDimension, k = expert.lastDimension
        guarantee(l >= 1 && t % l == 0, "sequenceBalanceLoss: \(t) tokens are not whole sequences of \(l)")
        let s = t / l
        let f = withoutGradient { () -> Tensor in
            let chosen = Tensor.ones(expert.shape, dtype: p.dtype, device: p.device).scattered(lastAxis: expert, width: n)   // [T, N]
            return Tensor.ones([s, 1, l], dtype: p.dtype, device: p.device).matmul(chosen.reshaped([s, l, n])) * (Double(n) / Double(k * l))
        }
        let meanP = Tensor.ones([s, 1, l], dtype: p.dtype, device: p.device).matmul(p.reshaped([s, l, n])) * (1 / Double(l))
        return (f * meanP).sum() * (1 / Double(s))
    }
}
