import NN
import Tensors

// Notation: T tokens on this rank (inputs [..., d] flattened to [T, d]), d model width, N experts in
// all, E experts on this rank, W ranks of the expert-parallel group, k slots per token.

/// What one forward of an `MoELayer` computes (MOE_SEMANTICS §1).
public struct MoEOutput: @unchecked Sendable {
    /// The layer's output, shaped as its input.
    public let output: Tensor
    /// The gate's balance loss, unweighted, if the gate has one.
    public let auxLoss: Tensor?
    /// The router z-loss, already weighted by the gate's `zLossWeight`, if on.
    public let zLoss: Tensor?
    /// This rank's routed and kept counts, read from the device when asked.
    public let pendingLoad: PendingLoad
    /// DeepSeek-V3's sequence-wise balance loss, unweighted, when `sequenceBalanceWeight > 0`.
    public let sequenceBalanceLoss: Tensor?
    /// Expert choice in training: the fraction of evaluation slots its routing did not choose.
    public let routingDisagreement: Double?

    /// This rank's routed and kept counts (a host sync on a GPU if the layer made none).
    public var load: LoadStatistics { pendingLoad.statistics }
}

/// A Mixture-of-Experts layer (FastMoE's `FMoE`): route → dispatch → experts → combine, a thin
/// composition of the gate (`Router/`), the dispatcher (`Dispatch/`) and the experts (`Experts/`).
///
/// Inputs of any leading shape `[..., d]` are flattened to `[T, d]` and the output is reshaped back,
/// so it can stand in for a Transformer block's MLP. `forward` returns the output with the gate's
/// losses and the load; calling the layer returns the output alone, with
/// `balanceLossWeight · auxLoss + zLoss` attached to the graph (`attachAuxiliaryLoss`), so the task
/// loss's backward trains the gate to balance, and with the load reported to its `LoadMonitor`.
/// ```swift
/// let moe = MoELayer(dModel: 64, gate: NoisyTopKGate(dModel: 64, globalExpertCount: 4, topK: 2, generator: &g),
///                    experts: BatchedExperts(localExpertCount: 4, dModel: 64, hidden: 128, generator: &g))
/// let result = moe.forward(x)            // x [batch, time, 64]
/// let loss = task + 0.01 * result.auxLoss!
/// ```
public final class MoELayer: Module, Layer, @unchecked Sendable {
    public let gate: any Gate
    public let experts: any Experts
    /// Moves tokens between the gate's decisions and the experts (the expert-parallel seam).
    public let dispatcher: TokenDispatcher
    public let dModel: Int
    /// Dropout on the layer's output (a dense MLP's, carried over by `moefy`); nil for none.
    public var dropout: Dropout?
    /// The weight of the gate's balance loss in the training objective when the layer is called
    /// (`moefy` sets `balanceWeight / MoE layers`: MOE_SEMANTICS §1's mean over layers); 0 = not added.
    public var balanceLossWeight: Double = 0
    /// The weight of DeepSeek-V3's sequence-wise balance loss (computed over each sequence of an input
    /// `[sequences, length, d]`; a 2-D input is one sequence); 0 = off. Needs a gate that returns
    /// `probabilities`.
    public var sequenceBalanceWeight: Double = 0
    /// Dense MLPs every token passes through, added to the routed output (DeepSeek-MoE, Qwen-MoE):
    /// `S` shared experts of width `h` as one MLP of width `S·h` (the same function: the hidden units
    /// of the S experts side by side, their output biases summed). Its parameters are `.shared`.
    public var sharedExperts: MLP?
    /// Where training-mode calls report their load, and this layer's index there (`LoadMonitor.install`).
    var loadMonitor: (monitor: LoadMonitor, index: Int)?

    /// A layer over `gate` and `experts`; `exchange` spreads the experts over ranks (local by default).
    public init(dModel: Int, gate: any Gate, experts: any Experts, exchange: (any TokenExchange)? = nil) {
        let dispatcher = TokenDispatcher(globalExpertCount: gate.globalExpertCount, exchange: exchange)
        guarantee(experts.localExpertCount == dispatcher.exchange.localExpertCount,
                  "MoELayer: \(gate.globalExpertCount) experts over \(dispatcher.exchange.rankCount) rank(s) leave "
                  + "\(dispatcher.exchange.localExpertCount) on this one, but \(experts.localExpertCount) are given")
        self.gate = gate
        self.experts = experts
        self.dispatcher = dispatcher
        self.dModel = dModel
    }

    /// The output with the gate's losses and the load (nothing attached, nothing reported).
    public func forward(_ x: Tensor) -> MoEOutput {
        guarantee(x.lastDimension == dModel, "MoELayer(d = \(dModel)): input \(x.shape) has last dimension \(x.lastDimension)")
        let tokens = x.reshaped([-1, dModel])
        let routing = gate.route(tokens)
        let dispatched = dispatcher.dispatch(tokens, routing: routing)
        let y = experts(dispatched.rows, groups: dispatched.groups)
        var combined = dispatcher.combine(y, score: routing.score, dispatched)
        if let sharedExperts { combined = combined + sharedExperts(tokens) }
        var out = combined.reshaped(x.shape)
        if let dropout { out = dropout(out) }
        var sequenceLoss: Tensor?
        if sequenceBalanceWeight > 0 {
            guard let p = routing.probabilities else {
                fatalError("MoELayer: sequenceBalanceWeight needs a gate that returns probabilities; \(type(of: gate)) does not")
            }
            sequenceLoss = GateMath.sequenceBalanceLoss(probabilities: p, expert: routing.expert,
                                                        sequenceLength: x.rank >= 3 ? x.shape[x.rank - 2] : tokens.shape[0])
        }
        return MoEOutput(output: out, auxLoss: routing.auxLoss, zLoss: routing.zLoss, pendingLoad: dispatched.pendingLoad,
                         sequenceBalanceLoss: sequenceLoss, routingDisagreement: routing.routingDisagreement)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let result = forward(x)
        if isTraining, let (monitor, index) = loadMonitor {
            monitor.record(layer: index, result.pendingLoad, routingDisagreement: result.routingDisagreement)
        }
        var objective = result.zLoss
        for (loss, weight) in [(result.auxLoss, balanceLossWeight), (result.sequenceBalanceLoss, sequenceBalanceWeight)] {
            guard weight != 0, let loss else { continue }
            let weighted = loss * weight
            objective = objective.map { $0 + weighted } ?? weighted
        }
        guard let objective else { return result.output }
        return attachAuxiliaryLoss(objective, to: result.output)
    }

    /// The standard Transformer MoE MLP (FastMoE's `FMoETransformerMLP`): a gate from the table and
    /// `BatchedExperts` `Linear(d→h) → GELU → Linear(h→d)`, both with bias.
    /// ```swift
    /// let mlp = MoELayer.mlp(dModel: 512, hidden: 1024, expertCount: 8, topK: 2, gate: .topK,
    ///                        initialization: .megatron(layers: 12), generator: &g)
    /// let y = mlp(x)   // x [batch, time, 512]
    /// ```
    public static func mlp(dModel: Int, hidden: Int, expertCount: Int, topK: Int = 2, gate: GateSpec = .topK,
                           zLossWeight: Double = 0, capacityFactor: CapacityFactor = CapacityFactor(),
                           balance: RoutingBalance? = nil, biasUpdateRate: Double = RouterBias.defaultUpdateRate,
                           score: RouterScore = .softmax,
                           activation: ExpertActivation = .gelu, initialization: ExpertInitialization = .linearDefault,
                           dtype: DType = .float32, device: Device = .cpu, generator: inout RandomGenerator) -> MoELayer {
        let router = gate.make(GateOptions(dModel: dModel, globalExpertCount: expertCount, topK: topK, zLossWeight: zLossWeight,
                                           capacityFactor: capacityFactor, balance: balance, biasUpdateRate: biasUpdateRate,
                                           score: score, dtype: dtype, device: device), generator: &generator)
        let experts = BatchedExperts(localExpertCount: expertCount, dModel: dModel, hidden: hidden, activation: activation,
                                     initialization: initialization, dtype: dtype, device: device, generator: &generator)
        return MoELayer(dModel: dModel, gate: router, experts: experts)
    }
}

extension MoELayer: ActiveParameterCounting {
    /// The gate, plus `k` experts' worth of expert parameters (the mean expert, for mixed experts;
    /// expert choice's `k` is `round(cf)`, its mean experts per token), plus the shared experts.
    public var activeParameterCount: Int {
        gate.parameterCount + gate.topK * experts.parameterCount / max(experts.localExpertCount, 1)
            + (sharedExperts?.parameterCount ?? 0)
    }
}
