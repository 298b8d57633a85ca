import Distributed
import MoE
import NN

/// Where a run's experts live (docs/distributed.md, "Expert parallelism"): the world of `W` ranks
/// split into `W / W_ep` expert-parallel groups of `W_ep` consecutive ranks, each holding every
/// expert once (`E = N / W_ep` per rank), and `W_ep` replica groups (the ranks with the same
/// position in their expert-parallel group, which hold the same experts).
///
/// Ranks `0 ..< W_ep` (replica 0) write the expert shards of checkpoints.
/// ```swift
/// let layout = try ExpertLayout.make(config, world: world)   // nil: experts replicated (W_ep = 1)
/// let model = ModelFactory.build(config, device: device, experts: layout)
/// ```
public struct ExpertLayout {
    /// The `W_ep` ranks that together hold every expert once; tokens are exchanged among them.
    public let expertParallel: any ProcessGroup
    /// The `W / W_ep` ranks that hold the same experts; expert gradients are averaged among them.
    public let replicas: any ProcessGroup
    /// `N`.
    public let globalExpertCount: Int

    /// `W_ep`.
    public var size: Int { expertParallel.size }
    /// This rank's place in its expert-parallel group: it holds experts `rank·E ..< (rank+1)·E`.
    public var rank: Int { expertParallel.rank }
    /// `E`.
    public var localExpertCount: Int { globalExpertCount / size }
    /// This rank's global experts.
    public var expertRange: Range<Int> { (rank * localExpertCount)..<((rank + 1) * localExpertCount) }
    /// This rank's experts, for loading checkpoints.
    public var slice: Checkpoint.ExpertSlice { Checkpoint.ExpertSlice(range: expertRange, globalExpertCount: globalExpertCount) }
    /// Whether this rank writes its experts' checkpoint shard (one replica of each shard writes).
    public var writesShard: Bool { replicas.rank == 0 }

    /// The layout of `config` over `world`, or nil when the experts are replicated on every rank
    /// (a dense model, one rank, or `--expert-parallel 1`). Every rank must call it (it splits `world`).
    /// - Throws: `RunConfigError` when `W_ep` does not divide the world or the experts.
    public static func make(_ config: RunConfig, world: any ProcessGroup) throws -> ExpertLayout? {
        let w = world.size, wep = config.effectiveExpertParallel(worldSize: w)
        guard config.isMoE, wep > 1 else { return nil }
        guard w % wep == 0 else {
            throw RunConfigError("--expert-parallel \(wep) does not divide the \(w) ranks of this job into expert-parallel groups; "
                + "use a divisor of \(w) (\((1...w).filter { w % $0 == 0 }.map(String.init).joined(separator: ", "))) or run on a multiple of \(wep) ranks")
        }
        guard config.experts % wep == 0 else {
            throw RunConfigError("--expert-parallel \(wep): --experts \(config.experts) does not split evenly over \(wep) ranks; "
                + "use a number of experts divisible by \(wep), or --expert-parallel 1 to replicate the experts")
        }
        // Both splits are collectives: every rank makes them, in this order.
        let expertParallel = world.split(color: world.rank / wep, key: world.rank)
        let replicas = world.split(color: world.rank % wep, key: world.rank)
        return ExpertLayout(expertParallel: expertParallel, replicas: replicas, globalExpertCount: config.experts)
    }

    /// Where each parameter group's gradients are averaged (MOE_SEMANTICS §3): shared parameters over
    /// the world; an expert's over its replicas, after dividing by `W_ep` (`mean`: the all-to-all
    /// backward summed the expert-parallel group's tokens) or not (`sum`: FastMoE's convention).
    public func placement(world: any ProcessGroup, expertGradient: String) -> (ParameterGroup) -> ParameterPlacement? {
        let scale = expertGradient == "sum" ? 1 : 1 / Double(size)
        return { [self] group in
            switch group {
            case .shared: ParameterPlacement(replicas: world)
            case .expert: ParameterPlacement(replicas: replicas, shards: expertParallel, scale: scale)
            }
        }
    }
}
