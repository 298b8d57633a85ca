import Distributed
import MoE
import NN
import Tensors

// `fastmoe bench moe-layer` over W > 1 ranks: weak scaling of expert parallelism. Notation as in
// MoELayerBenchmark.swift, with W ranks, E experts on each (E·W in all) and T tokens on each; s is the
// dtype's bytes.

/// What a run over W > 1 ranks measures besides the expert-parallel layer's own times.
public struct ExpertParallelBenchResult: Sendable {
    /// W.
    public var world: Int
    /// The one-rank baseline: the layer with this rank's E experts and no exchange (`LocalExchange`),
    /// on the same T tokens, in the same run. Slowest rank's median.
    public var localForwardMs: Double
    public var localForwardBackwardMs: Double
    /// Bytes one rank sends through the layer's four all-to-alls of a fwd+bwd (dispatch and combine,
    /// and their mirrors in the backward), `2·(rows sent + rows received)·D·s`, averaged over the
    /// ranks. As nccl-tests counts them: the rows a rank keeps for its own experts are included.
    public var allToAllBytes: Int
    /// Those four all-to-alls alone, with the layer's message sizes: slowest rank's median.
    public var allToAllMs: Double

    /// GB/s: bytes / time (nccl-tests' algbw).
    public var allToAllAlgbw: Double { Double(allToAllBytes) / allToAllMs / 1e6 }
    /// nccl-tests' all-to-all busbw, algbw·(W−1)/W (what `fastmoe bench collectives` reports).
    public var allToAllBusbw: Double { allToAllAlgbw * Double(world - 1) / Double(world) }
}

extension MoELayerBenchResult {
    /// T / fwd+bwd time: tokens per second through one rank's layer.
    public var tokensPerSecond: Double { Double(config.tokens) / forwardBackwardMs * 1e3 }
    /// Weak-scaling efficiency, one-rank fwd+bwd time over expert-parallel fwd+bwd time (1 = perfect);
    /// nil for one rank.
    public var efficiency: Double? { expertParallel.map { $0.localForwardBackwardMs / forwardBackwardMs } }
}

extension MoELayerBenchmark {
    /// Every rank of `group` times the expert-parallel layer (E·W experts, E here, tokens exchanged by
    /// all-to-all over `group`), the one-rank layer of its E experts, and the exchange alone, each on its
    /// own T random tokens; a barrier before every timed iteration starts the ranks together. Times
    /// are the slowest rank's median (the slowest rank sets the step), so every rank returns the same.
    static func measureExpertParallel(_ c: MoELayerBenchConfig, device: Device, group: any ProcessGroup) -> MoELayerBenchResult {
        let dtype = c.dtype, rank = group.rank, w = group.size, n = c.globalExperts
        let spec = GateSpec.named(c.gate)!
        func layer(experts: Int, generator g: inout RandomGenerator) -> MoELayer {
            let layer = MoELayer.mlp(dModel: c.dModel, hidden: c.hidden, expertCount: experts, topK: c.topK, gate: spec,
                                     dtype: dtype, device: device, generator: &g)
            if spec.hasBalanceLoss { layer.balanceLossWeight = 0.01 }
            return layer
        }
        // As the trainer: the whole layer from the seed on every rank, then this rank's slice, routing
        // (capacity, noise, balance statistics) over the global batch.
        var g = RandomGenerator(seed: c.seed)
        let ep = layer(experts: n, generator: &g).sharded(over: group)
        setGlobalBatch(ep, group: group)
        setBalanceStatistics(ep, group: group)
        var localGenerator = RandomGenerator(seed: c.seed)
        let local = layer(experts: c.experts, generator: &localGenerator)

        // Each rank its own tokens: a slice of the seed's stream far past the layers' draws.
        var inputGenerator = RandomGenerator(seed: c.seed, offset: UInt64(rank + 1) << 32)
        let sets = (0..<(2 * c.inputSets)).map { _ in
            Tensor.randomNormal([c.tokens, c.dModel], dtype: dtype, device: device, generator: &inputGenerator)
        }
        let xs = Array(sets.prefix(c.inputSets)), dys = Array(sets.suffix(c.inputSets))

        // Every rank's routed and kept counts [E·W] on the first input set, gathered: the load of the
        // global batch and each rank's all-to-all message sizes, as the dispatcher derives them.
        let load = withoutGradient { ep.forward(xs[0]).load }
        let gathered = group.allGather(Tensor((load.routedCounts + load.keptCounts).map { Int32($0) }, shape: [1, 2 * n], device: device))
            .int32s().map(Int.init)
        let routed = (0..<n).map { e in (0..<w).reduce(0) { $0 + gathered[$1 * 2 * n + e] } }
        func kept(from source: Int, toRank destination: Int) -> Int {
            (0..<c.experts).reduce(0) { $0 + gathered[source * 2 * n + n + destination * c.experts + $1] }
        }
        let sendCounts = (0..<w).map { kept(from: rank, toRank: $0) }, receiveCounts = (0..<w).map { kept(from: $0, toRank: rank) }
        // Σ over ranks of rows sent = Σ of rows received = every kept slot; each crosses twice each way.
        let keptEverywhere = (0..<w).reduce(0) { $0 + gathered[($1 * 2 * n + n)..<(($1 + 1) * 2 * n)].reduce(0, +) }
        let bytes = (4 * keptEverywhere * c.dModel * dtype.byteSize + w / 2) / w

        let backend = Backends.backend(for: device)
        let together = { backend.synchronize(); group.barrier() }
        let epTimes = layerTimings(device, c, { ep($0) }, ep.parameters(), xs, dys, before: together)
        let localTimes = layerTimings(device, c, { local($0) }, local.parameters(), xs, dys, before: together)
        let sent = Tensor.randomNormal([sendCounts.reduce(0, +), c.dModel], dtype: dtype, device: device, generator: &inputGenerator)
        let received = Tensor.randomNormal([receiveCounts.reduce(0, +), c.dModel], dtype: dtype, device: device, generator: &inputGenerator)
        let exchangeMs = medianMilliseconds(device, c, { _ in together() }) { _ in
            for _ in 0..<2 {   // dispatch, combine; in the backward their mirrors
                _ = group.allToAll(sent, sendCounts: sendCounts, receiveCounts: receiveCounts)
                _ = group.allToAll(received, sendCounts: receiveCounts, receiveCounts: sendCounts)
            }
        }

        let slowest = Tensor([epTimes.forward, epTimes.forwardBackward, localTimes.forward, localTimes.forwardBackward, exchangeMs]
            .map { Float($0) }, device: device)
        group.allReduce(slowest, .max)
        let ms = slowest.scalars().map(Double.init)
        return MoELayerBenchResult(
            config: c, device: device, forwardMs: ms[0], forwardBackwardMs: ms[1], denseForwardMs: .nan, denseForwardBackwardMs: .nan,
            denseGemmMs: [], peakBytes: 0, mustKeepBytes: 0, densePeakBytes: 0, denseMustKeepBytes: 0,
            loadMaxOverMean: LoadStatistics.maxOverMean(routed),
            expertParallel: ExpertParallelBenchResult(world: w, localForwardMs: ms[2], localForwardBackwardMs: ms[3],
                                                      allToAllBytes: bytes, allToAllMs: ms[4]))
    }
}
