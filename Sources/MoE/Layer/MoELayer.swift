import NN
import Tensors

/// A Mixture-of-Experts layer (FastMoE's `FMoE`): gate, dispatcher, experts (MOE_SEMANTICS §1).
///
/// Inputs of any leading shape `[..., d]` are flattened to `[B, d]` and the output is reshaped back,
/// so it can stand in for a Transformer block's MLP. The gate's losses and the load of the last
/// forward are kept for the trainer (`MoEAuxiliaryLossProvider`).
/// ```swift
/// let moe = MoELayer(dModel: 64, gate: TopKGate(dModel: 64, expertCount: 4, topK: 2, generator: &g),
///                    experts: BatchedExperts(experts: 4, dModel: 64, hidden: 128, generator: &g))
/// let y = moe(x)                         // x [batch, time, 64]
/// let loss = task + 0.01 * moe.lastAuxLoss!
/// ```
open class MoELayer: Module, Layer, MoEAuxiliaryLossProvider, @unchecked Sendable {
    public let gate: any Gate
    public let experts: any Experts
    /// Moves tokens between the gate's decisions and the experts (the expert-parallel seam).
    public let dispatcher: Dispatcher
    public let dModel: Int
    /// Dropout on the layer's output (a dense MLP's, carried over by `moefy`); nil for none.
    public var dropout: Dropout?

    public private(set) var lastAuxLoss: Tensor?
    public private(set) var lastZLoss: Tensor?
    public private(set) var lastLoadStatistics: LoadStatistics?

    public init(dModel: Int, gate: any Gate, experts: any Experts, dispatcher: Dispatcher? = nil) {
        let d = dispatcher ?? Dispatcher(expertCount: gate.expertCount)
        guarantee(d.expertCount == gate.expertCount, "MoELayer: dispatcher for \(d.expertCount) experts, gate routes to \(gate.expertCount)")
        guarantee(dispatcher != nil || experts.expertCount == gate.expertCount,
                     "MoELayer: gate routes to \(gate.expertCount) experts but \(experts.expertCount) are given")
        self.gate = gate
        self.experts = experts
        self.dispatcher = d
        self.dModel = dModel
    }

    open func callAsFunction(_ x: Tensor) -> Tensor {
        guarantee(x.lastDimension == dModel, "MoELayer(d = \(dModel)): input \(x.shape) has last dimension \(x.lastDimension)")
        let tokens = x.reshaped([-1, dModel])
        let routing = gate.route(tokens)
        let dispatched = dispatcher.dispatch(tokens, routing: routing)
        let y = experts(dispatched.rows, groups: dispatched.groups)
        let out = dispatcher.combine(y, score: routing.score, dispatched)
        lastAuxLoss = routing.auxLoss
        lastZLoss = routing.zLoss
        lastLoadStatistics = LoadStatistics(countsBeforeDrop: dispatched.countsBeforeDrop, counts: dispatched.counts,
                                            tokens: dispatched.tokenCount, topK: dispatched.topK)
        let y2 = out.reshaped(x.shape)
        return dropout.map { $0(y2) } ?? y2
    }
}

extension MoELayer: ActiveParameterCounting {
    /// The gate, plus `k` experts' worth of expert parameters (the mean expert, for mixed experts).
    public var activeParameterCount: Int {
        gate.parameterCount + gate.topK * experts.parameterCount / max(experts.expertCount, 1)
    }
}
