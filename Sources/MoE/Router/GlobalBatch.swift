import Distributed
import NN
import Tensors

// Notation: W ranks whose tokens make one global batch (the world of a data- and expert-parallel
// run), rank r, T tokens on each, k slots per token, N experts in all, C capacity per expert.

/// A gate whose routing decisions are those of the global batch (MOE_SEMANTICS §4, last paragraph):
/// `batchGroup` is the group whose ranks' tokens, concatenated in rank order, make the batch one
/// rank would route. Then capacity is `C` of the `W·T` tokens and the slots kept are the ones the
/// one-rank plan keeps (each rank drops its share of the surplus before sending), and random draws
/// (GShard's random routing, Switch's jitter, the noisy gate's `ε`) are those of each token's global
/// index. nil routes this rank's tokens alone. The trainer sets it to the world with `setGlobalBatch`.
///
/// Every rank must hold `T` tokens (the trainer's equal slices): the token offset `r·T` and the count
/// `W·T` are host numbers, and reading the others' counts would cost a sync per layer. The gate
/// returns the exchanged counts (`GateOutput.batchTokenCounts`) and the dispatcher checks them with
/// its one download.
/// ```swift
/// setGlobalBatch(model, group: world)   // every GShard/Switch/noisy gate of the model
/// ```
public protocol GlobalBatchRouting: AnyObject {
    var batchGroup: (any ProcessGroup)? { get set }
}

extension GShardGate: GlobalBatchRouting {}
extension SwitchGate: GlobalBatchRouting {}
extension NoisyTopKGate: GlobalBatchRouting {}

/// Points every gate of `model` that routes by the global batch (`GlobalBatchRouting`) at `group`;
/// nil goes back to each rank's own tokens.
public func setGlobalBatch(_ model: Module, group: (any ProcessGroup)?) {
    for (_, module) in model.namedModules() {
        (module as? any GlobalBatchRouting)?.batchGroup = group
    }
}

/// This rank's `T` tokens as rows `r·T ..< (r+1)·T` of the global batch over `group` (nil or one
/// rank: the batch is this rank's).
struct GlobalBatch {
    let group: (any ProcessGroup)?
    /// `T`.
    let tokens: Int

    private var distributed: (any ProcessGroup)? { group.flatMap { $0.size > 1 ? $0 : nil } }
    /// `r·T`: the global index of this rank's first token (the start of its random draws).
    var firstToken: Int { (distributed?.rank ?? 0) * tokens }
    /// `W·T`: the tokens capacity is computed from.
    var tokenCount: Int { (distributed?.size ?? 1) * tokens }

    /// `[W]` int32 on `device`: every rank's `T`, for the dispatcher's check (device only); nil with one rank.
    func tokenCounts(device: Device) -> Tensor? {
        distributed?.allGather(Tensor.full([1], Double(tokens), dtype: .int32, device: device))
    }

    /// The routing plan of this rank's `[T, k]` table with capacity `C` over the global batch: the
    /// slots it keeps are those the plan of the concatenated tables keeps (same `priority`, same
    /// mask), and with them `[W]` int32 token counts for the check (nil with one rank).
    ///
    /// Device work only: each rank's routed counts per (choice, expert) after the mask, with its `T`,
    /// go round one all-gather (`W·(k·N + 1)` int32); the seats that other ranks' slots take first
    /// (`MoEBackend.routingPlan`'s offset formula) are summed from them and handed to the plan.
    func routingPlan(_ expert: Tensor, expertCount n: Int, capacity: Int, priority: RoutingPriority,
                     slotMask: Tensor?) -> (plan: RoutingPlan, tokenCounts: Tensor?) {
        guard let group = distributed else {
            return (Tensors.routingPlan(expert, expertCount: n, capacity: capacity, priority: priority, slotMask: slotMask), nil)
        }
        let k = expert.lastDimension, device = expert.device
        // The offsets are float32 sums of counts: exact while every count stays below 2^24.
        guarantee(tokenCount * k < 1 << 24, "GlobalBatch: \(tokenCount) tokens × \(k) slots exceed the exact float32 counts of the capacity exchange")
        let mine = Tensor.concat([Self.routedCountsPerChoice(expert, expertCount: n, slotMask: slotMask).reshaped([k * n]),
                                  Tensor.full([1], Double(tokens), dtype: .int32, device: device)], axis: 0)
        let all = group.allGather(mine.reshaped([1, k * n + 1]))
        let counts = all.slice(lastAxis: 0..<(k * n)).cast(to: .float32)
        let offset = Self.capacityOffset(counts, rank: group.rank, topK: k, priority: priority)
        let plan = Tensors.routingPlan(expert, expertCount: n, capacity: capacity, capacityOffset: offset, priority: priority,
                                       slotMask: slotMask)
        return (plan, all.slice(lastAxis: (k * n)..<(k * n + 1)).reshaped([group.size]))
    }

    /// `[k, N]` int32: the slots of each choice routed to each expert, after the mask. The plan of
    /// each column alone gives them (its routed counts): k small plans on the device, no new primitive.
    static func routedCountsPerChoice(_ expert: Tensor, expertCount n: Int, slotMask: Tensor?) -> Tensor {
        let k = expert.lastDimension
        return Tensor.concat((0..<k).map { j in
            Tensors.routingPlan(expert.slice(lastAxis: j..<(j + 1)), expertCount: n,
                                slotMask: slotMask?.slice(lastAxis: j..<(j + 1))).routedCounts
        }, axis: 0).reshaped([k, n])
    }

    /// `[k, N]` int32 seats taken before rank `r`'s choice-`j` slots, from `counts` `[W, k·N]` float32
    /// (row `w`: rank `w`'s routed counts, choice-major): `MoEBackend.routingPlan`'s formula.
    static func capacityOffset(_ counts: Tensor, rank r: Int, topK k: Int, priority: RoutingPriority) -> Tensor {
        let n = counts.lastDimension / k
        // Σ_{w<r} cnt_w[j, g], as [k, N].
        let earlier = r == 0 ? Tensor.zeros([k, n], device: counts.device) : counts.rows(0..<r).sumRows().reshaped([k, n])
        let offset: Tensor
        switch priority {
        case .tokenMajor:
            // Every slot of an earlier rank, whatever its choice.
            offset = Tensor.zeros([k, n], device: counts.device) + earlier.sumRows()
        case .choiceMajor:
            // The other ranks' earlier choices, then the earlier ranks' same choice.
            let others = (counts.sumRows() - counts.rows(r..<(r + 1)).reshaped([k * n])).reshaped([k, n])
            var before = Tensor.zeros([n], device: counts.device), rows: [Tensor] = []
            for j in 0..<k {
                rows.append(before + earlier.rows(j..<(j + 1)).reshaped([n]))
                before = before + others.rows(j..<(j + 1)).reshaped([n])
            }
            offset = Tensor.concat(rows, axis: 0).reshaped([k, n])
        }
        return offset.cast(to: .int32)
    }
}
