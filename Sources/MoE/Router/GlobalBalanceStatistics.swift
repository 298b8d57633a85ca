import Distributed
import NN
import Tensors

// Notation: T tokens on this rank, T_g = Σ_r T_r tokens of the global batch over the W ranks of the
// statistics group, N experts in all, k slots counted per token, p [T, N] the router probabilities.

/// A gate whose balance loss can use the statistics of the global batch (MOE_SEMANTICS §4 with
/// W > 1): `statisticsGroup` is the group whose ranks' tokens make the batch (the world of a
/// data- or expert-parallel run; `moefy` leaves it nil = this rank's tokens, `--balance-statistics
/// local`, GShard's and FastMoE's per-rank form). The trainer sets it with `setBalanceStatistics`.
/// ```swift
/// setBalanceStatistics(model, group: world)   // every GShard/Switch/top-k/noisy gate of the model
/// ```
public protocol GlobalBalanceStatistics: AnyObject {
    var statisticsGroup: (any ProcessGroup)? { get set }
}

extension TopKGate: GlobalBalanceStatistics {}
extension GShardGate: GlobalBalanceStatistics {}
extension SwitchGate: GlobalBalanceStatistics {}
extension NoisyTopKGate: GlobalBalanceStatistics {}

extension GateMath {
    /// The Switch/GShard balance loss `N · Σ_e f_e·P_e` of the global batch over `group`.
    ///
    /// One all-reduce (sum, on the device, no host sync, outside the graph) of `[count_e | Σ_t p_e | T]`
    /// (`2N + 1` values) gives the global `f_e = count_e / (T_g·k)` and `P_e = Σ p / T_g`. The loss
    /// is `N · Σ_e f_e · (P_local + stopGradient(P_global − P_local))`: its value is the global one on
    /// every rank, its gradient that of `P_local`, i.e. `∂/∂p[t, e] = N·f_e / T` on this rank's tokens.
    /// The data-parallel sync averages the gate's gradient over the W ranks, giving
    /// `(1/W)·Σ_r Σ_{t∈r} N·f_e/T_r · ∂p/∂θ = Σ_t N·f_e/T_g · ∂p/∂θ` when every rank has `T_r = T_g/W`
    /// tokens (the trainer's equal slices): exactly the one-rank gradient of the concatenated batch.
    /// (A global `P` through the graph would need an all-reduce in backward too, and would be W times
    /// too large after the average.)
    static func balanceLoss(probabilities p: Tensor, top1: Tensor, over group: (any ProcessGroup)?) -> Tensor {
        guard let group, group.size > 1 else { return balanceLoss(probabilities: p, top1: top1) }
        let t = p.shape[0], n = p.lastDimension, k = top1.lastDimension
        let pLocal = p.sumRows() / Double(t)
        let (f, pGlobal) = withoutGradient { () -> (Tensor, Tensor) in
            let counts = Tensor.ones(top1.shape, dtype: p.dtype, device: p.device).scattered(lastAxis: top1, width: n).sumRows()
            let tokens = Tensor([Double(t)], shape: [1], dtype: p.dtype, device: p.device)
            let stats = Tensor.concat([counts.reshaped([n]), p.sumRows().reshaped([n]), tokens], axis: 0).contiguousCopy()
            group.allReduce(stats, .sum)
            let total = stats.rows((2 * n)..<(2 * n + 1))
            return (stats.rows(0..<n) / (total * Double(k)), stats.rows(n..<(2 * n)) / total)
        }
        let pStraightThrough = pLocal.reshaped([n]) + (pGlobal - pLocal.reshaped([n]).detached())
        return (f * pStraightThrough).sum() * Double(n)
    }

    /// `Σ cv²(v)` over per-expert sums `v` `[N]` (the noisy gate's importance and load) of the global
    /// batch over `group`: `cv²(v_global)` with `v_global = Σ_ranks v`, all sums in one all-reduce
    /// (on the device, outside the graph). As for `balanceLoss`, the straight-through
    /// `W·v + stopGradient(v_global − W·v)` makes the value global and the gradient `W·cv²'(v_global)·∂v`,
    /// whose average over the W ranks (the data-parallel sync) is `cv²'(v_global)·Σ_ranks ∂v`: the
    /// one-rank gradient of the concatenated batch (the ranks' counts need not be equal here).
    static func cvSquared(_ sums: [Tensor], over group: (any ProcessGroup)?) -> Tensor {
        guard let group, group.size > 1 else { return sums.dropFirst().reduce(cvSquared(sums[0])) { $0 + cvSquared($1) } }
        let w = Double(group.size)
        let global = withoutGradient { () -> Tensor in
            let all = Tensor.concat(sums, axis: 0)
            group.allReduce(all, .sum)
            return all
        }
        var at = 0
        let terms = sums.map { v -> Tensor in
            defer { at += v.count }
            let scaled = v * w
            return cvSquared(scaled + (global.rows(at..<(at + v.count)) - scaled.detached()))
        }
        return terms.dropFirst().reduce(terms[0], +)
    }
}
