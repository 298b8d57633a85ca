import NN
import Tensors

// Notation: d model width, N experts in all, k slots per token, h expert hidden width.

/// Turns the dense MLPs of a Transformer into MoE MLPs (MOE_SEMANTICS §6): every `TransformerBlock`
/// in `model` (depth first, e.g. `GPT.blocks`) whose index `i` satisfies `i % every == 0` and whose
/// `mlp` is a dense `MLP` gets an MoE MLP (`MoELayer.mlp`) in its place. Returns the names of the
/// replaced modules.
///
/// - `expertHidden`: each expert's hidden width; defaults to `h_dense / topK`, so a token's
///   FLOPs stay those of the dense model (FastMoE's Megatron adapter does the same), apart from
///   the gate and `k − 1` extra output biases.
/// - `copy`: sparse upcycling: every expert starts as a copy of the dense MLP (its width is then
///   `h_dense`, the default when `copy` is set; a different `expertHidden` is refused). Since the
///   scores of the top-k gates add up to 1, the upcycled model computes what the dense one did
///   until training moves the experts apart. Without `copy`, experts get Megatron's init
///   (`N(0, 0.02)`, second weight `N(0, 0.02/√(2·blocks))`, biases 0), as GPT's own init.
/// - The dense MLP's activation and dropout carry over; the gate's parameters follow the dense
///   weights' dtype and device.
/// - `balanceWeight`: each new layer adds `balanceWeight / layers · auxLoss` to the objective when
///   called (the mean over layers of MOE_SEMANTICS §1); 0 leaves the balance loss out.
/// - `balance`, `biasUpdateRate`, `score`: the gate's balancing (`RoutingBalance`; nil = the gate
///   row's default) and combine weights (`RouterScore`).
/// - `sequenceBalanceWeight`: DeepSeek-V3's sequence-wise balance loss, `weight / layers` per layer.
/// - `sharedExperts`: `S` dense experts every token passes through, each `sharedHidden` wide (default
///   the routed experts' width), Megatron-initialised as the experts, `.shared` parameters.
/// ```swift
/// var g = RandomGenerator(seed: 1)
/// let model = GPT(config, generator: &g)
/// moefy(model, expertCount: 8, topK: 2, gate: .gshard, balanceWeight: 0.01, generator: &g)   // every block: 8 experts, h/2 wide
/// ```
@discardableResult
public func moefy(_ model: Module, expertCount experts: Int, topK: Int = 2, gate: GateSpec = .topK, every: Int = 1,
                  expertHidden: Int? = nil, copy: Bool = false, balanceWeight: Double = 0, zLossWeight: Double = 0,
                  capacityFactor: CapacityFactor = CapacityFactor(), balance: RoutingBalance? = nil,
                  biasUpdateRate: Double = RouterBias.defaultUpdateRate, score: RouterScore = .softmax,
                  sequenceBalanceWeight: Double = 0, sharedExperts: Int = 0, sharedHidden: Int? = nil,
                  generator: inout RandomGenerator) -> [String] {
    guarantee(sharedExperts >= 0, "moefy: sharedExperts \(sharedExperts) must be 0 or more")
    guarantee(experts >= 1 && topK >= 1 && topK <= experts, "moefy: topK \(topK) must be in 1...experts (\(experts))")
    guarantee(every >= 1, "moefy: every = \(every) must be at least 1 (1 = every block)")
    let blocks = model.namedModules().compactMap { entry in (entry.module as? TransformerBlock).map { (entry.name, $0) } }
    var replaced: [(name: String, layer: MoELayer)] = []
    for (i, (name, block)) in blocks.enumerated() where i % every == 0 {
        guard let dense = block.mlp as? MLP else { continue }
        let d = dense.fc1.inFeatures, hDense = dense.fc1.outFeatures
        let hidden = expertHidden ?? (copy ? hDense : defaultExpertHidden(denseHidden: hDense, topK: topK))
        guarantee(!copy || hidden == hDense,
                  "moefy: copy: true seeds every expert with the dense MLP (hidden \(hDense)); expertHidden \(hidden) cannot hold it — drop expertHidden")
        let weight = dense.fc1.weight.value
        let activation: ExpertActivation
        switch dense.activation.kind {
        case .gelu(let approximate): activation = approximate ? .gelu : .geluExact
        case .silu: activation = .silu
        case .relu: activation = .relu
        }
        let moe = MoELayer.mlp(dModel: d, hidden: hidden, expertCount: experts, topK: topK, gate: gate, zLossWeight: zLossWeight,
                               capacityFactor: capacityFactor, balance: balance, biasUpdateRate: biasUpdateRate, score: score,
                               activation: activation,
                               initialization: .megatron(std: 0.02, layers: blocks.count),
                               dtype: weight.dtype, device: weight.device, generator: &generator)
        if copy {
            func repeated(_ t: Tensor) -> Tensor {
                let one = t.detached().reshaped([1] + t.shape)
                return Tensor.concat(Array(repeating: one, count: experts), axis: 0)
            }
            let e = moe.experts as! BatchedExperts   // what `MoELayer.mlp` builds
            e.fc1.weight.value = repeated(dense.fc1.weight.value)
            e.fc2.weight.value = repeated(dense.fc2.weight.value)
            if let b = dense.fc1.bias { e.fc1.bias!.value = repeated(b.value) } else { e.fc1.bias!.value = Tensor.zeros([experts, hidden], dtype: weight.dtype, device: weight.device) }
            if let b = dense.fc2.bias { e.fc2.bias!.value = repeated(b.value) } else { e.fc2.bias!.value = Tensor.zeros([experts, d], dtype: weight.dtype, device: weight.device) }
        }
        if sharedExperts > 0 {
            let std = 0.02, width = sharedExperts * (sharedHidden ?? hidden)
            moe.sharedExperts = MLP(d, hidden: width, activation: dense.activation.kind, initStd: std,
                                    outputInitStd: std / (2 * Double(blocks.count)).squareRoot(),
                                    device: weight.device, dtype: weight.dtype, generator: &generator)
        }
        if dense.dropout.p > 0 { moe.dropout = dense.dropout }
        moe.train(dense.isTraining)
        block.mlp = moe
        replaced.append((name.isEmpty ? "mlp" : "\(name).mlp", moe))
    }
    for (_, layer) in replaced {
        layer.balanceLossWeight = balanceWeight / Double(replaced.count)
        layer.sequenceBalanceWeight = sequenceBalanceWeight / Double(replaced.count)
    }
    return replaced.map(\.name)
}

/// `moefy`'s expert width: `h_dense / k`, so a token's FLOPs stay those of the dense model.
public func defaultExpertHidden(denseHidden: Int, topK: Int) -> Int { max(1, denseHidden / topK) }
