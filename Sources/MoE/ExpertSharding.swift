import Distributed
import NN
import Tensors

// Notation: N experts in all, E = N / W experts on this rank, W ranks of the expert-parallel group
// (global expert g lives on group rank g / E as local expert g % E).

/// Spreads the experts of every MoE MLP in `model` (each `TransformerBlock` whose `mlp` is an
/// `MoELayer` with `BatchedExperts` or an `ExpertList`) over the ranks of `group`: this rank keeps
/// experts `r·E ..< (r+1)·E` (`r = group.rank`) and the layer exchanges tokens with the others through
/// an `AllToAllExchange`. Gate, shared experts, dropout and loss weights carry over unchanged.
///
/// Slicing a model that was built whole is what makes a sharded run start from the weights of the
/// one-rank run of the same seed, whatever the layout; the full experts exist only while building
/// (fine at the sizes we train; a model too large for one rank's memory needs a per-slice init).
/// Returns the names of the sharded layers.
/// ```swift
/// let model = GPT(config, generator: &g)
/// moefy(model, expertCount: 8, topK: 2, generator: &g)
/// shardExperts(model, over: expertParallelGroup)     // 4 ranks: experts 2r, 2r+1 on rank r
/// ```
@discardableResult
public func shardExperts(_ model: Module, over group: any ProcessGroup) -> [String] {
    var sharded: [String] = []
    for (name, module) in model.namedModules() {
        guard let block = module as? TransformerBlock, let layer = block.mlp as? MoELayer else { continue }
        guarantee(layer.dispatcher.exchange.rankCount == 1, "shardExperts: \(name).mlp is sharded already")
        block.mlp = layer.sharded(over: group)
        sharded.append(name.isEmpty ? "mlp" : "\(name).mlp")
    }
    return sharded
}

extension MoELayer {
    /// This layer with only this rank's slice of its experts (experts `r·E ..< (r+1)·E` of `group`'s
    /// rank `r`) and an `AllToAllExchange` over `group`; gate, shared experts, dropout and loss weights
    /// carry over. What `shardExperts` does to each MoE MLP of a model, for a layer alone
    /// (`fastmoe bench moe-layer` under a launcher).
    ///
    /// `BatchedExperts` are sliced along their first axis into tensors of their own; an `ExpertList`
    /// keeps its experts `r·E ..< (r+1)·E` themselves (the same modules, in order, their parameters
    /// still `.expert`), numbered `0 ..< E` here (`ExpertListNames` maps them back to the global
    /// numbers for checkpoints). Other `Experts` types cannot be sliced: put such experts in an `ExpertList`.
    /// ```swift
    /// let full = MoELayer.mlp(dModel: 64, hidden: 128, expertCount: 8, generator: &g)   // same seed on every rank
    /// let layer = full.sharded(over: world)                                          // 4 ranks: 2 experts each
    /// ```
    public func sharded(over group: any ProcessGroup) -> MoELayer {
        let n = experts.localExpertCount, w = group.size
        guarantee(dispatcher.exchange.rankCount == 1, "MoELayer.sharded: the layer is sharded already")
        guarantee(n % w == 0, "MoELayer.sharded: \(n) experts do not split evenly over \(w) ranks")
        let e = n / w, range = (group.rank * e)..<((group.rank + 1) * e)
        let local: any Experts
        switch experts {
        case let batched as BatchedExperts:
            local = BatchedExperts(fc1: slice(batched.fc1, range), fc2: slice(batched.fc2, range), activation: batched.activation)
        case let list as ExpertList:
            local = ExpertList(Array(list.experts[range]))
        default:
            fatalError("MoELayer.sharded: \(type(of: experts)) experts cannot be sliced; only BatchedExperts and ExpertList can "
                + "(an ExpertList holds experts of any type)")
        }
        let replacement = MoELayer(dModel: dModel, gate: gate, experts: local,
                                   exchange: AllToAllExchange(group: group, localExpertCount: e))
        replacement.dropout = dropout
        replacement.balanceLossWeight = balanceLossWeight
        replacement.sequenceBalanceWeight = sequenceBalanceWeight
        replacement.sharedExperts = sharedExperts
        replacement.train(isTraining)
        return replacement
    }
}

/// Experts `range` of `layer`, in storage of their own (the full tensors can then be freed).
private func slice(_ layer: GroupedLinear, _ range: Range<Int>) -> GroupedLinear {
    func rows(_ t: Tensor) -> Tensor { t.rows(range).detached().contiguousCopy() }
    return GroupedLinear(weight: rows(layer.weight.value), bias: layer.bias.map { rows($0.value) })
}

/// Points the balance statistics of every gate in `model` that supports it at `group`: the balance
/// loss then counts the first choices and averages the probabilities of the global batch (see
/// `GlobalBalanceStatistics`); nil goes back to this rank's tokens.
public func setBalanceStatistics(_ model: Module, group: (any ProcessGroup)?) {
    for (_, module) in model.namedModules() {
        (module as? any GlobalBalanceStatistics)?.statisticsGroup = group
    }
}
