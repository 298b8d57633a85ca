import NN
import Tensors

/// Which ranks hold a parameter group's values, for data-parallel training: the ranks whose gradients
/// are averaged, and the ranks that hold other parts of the group (whose gradient norms add up).
///
/// Without expert parallelism every rank holds every parameter, experts included
/// (``replicated(over:)``). With it, an expert's replicas are the ranks that hold the same experts,
/// and its shards the expert-parallel group, whose ranks hold different experts:
/// ```swift
/// let sync = try GradientSync(parameters: model.namedParameters(), bucketBytes: 25 << 20) { group in
///     switch group {
///     case .shared: ParameterPlacement(replicas: world)
///     case .expert: ParameterPlacement(replicas: expertReplicas, shards: expertParallel)
///     }
/// }
/// ```
public struct ParameterPlacement {
    /// The ranks holding the same values: a gradient is averaged over them, and the starting values
    /// are broadcast from their rank 0.
    public let replicas: any ProcessGroup
    /// The ranks holding different parameters of the group (each its own experts): the squared
    /// gradient norms of the group add up over them. nil when every rank holds the whole group.
    public let shards: (any ProcessGroup)?
    /// A factor applied to the gradient after the average over `replicas` (1 = the plain average).
    public let scale: Double

    public init(replicas: any ProcessGroup, shards: (any ProcessGroup)? = nil, scale: Double = 1) {
        guarantee(scale.isFinite && scale > 0, "ParameterPlacement: scale \(scale) must be positive and finite")
        self.replicas = replicas
        self.shards = shards
        self.scale = scale
    }

    /// Plain data parallelism: every rank of `world` holds every parameter.
    public static func replicated(over world: any ProcessGroup) -> (ParameterGroup) -> ParameterPlacement? {
        { _ in ParameterPlacement(replicas: world) }
    }
}
