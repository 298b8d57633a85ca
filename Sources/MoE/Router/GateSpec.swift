import NN
import Tensors

// Notation: d model width, N experts in all, k slots per token.

/// What every gate needs to be built: the sizes, the losses and where its parameters live.
public struct GateOptions: Sendable {
    public var dModel: Int
    /// `N`.
    public var globalExpertCount: Int
    /// `k` (gates with a fixed `k` check it).
    public var topK: Int
    /// The router z-loss weight (0 = off).
    public var zLossWeight: Double
    /// For gates with a capacity.
    public var capacityFactor: CapacityFactor
    public var dtype: DType
    public var device: Device

    public init(dModel: Int, globalExpertCount: Int, topK: Int, zLossWeight: Double = 0,
                capacityFactor: CapacityFactor = CapacityFactor(), dtype: DType = .float32, device: Device = .cpu) {
        self.dModel = dModel
        self.globalExpertCount = globalExpertCount
        self.topK = topK
        self.zLossWeight = zLossWeight
        self.capacityFactor = capacityFactor
        self.dtype = dtype
        self.device = device
    }
}

/// One row of the gate table: a gate's name, what it does and how to build it. `moefy`, the
/// trainer's configuration and validation, `--help` and the benchmarks all read `GateSpec.all`, so
/// adding a gate is one row here.
/// ```swift
/// let spec = GateSpec.named("gshard")!
/// let gate = spec.make(GateOptions(dModel: 512, globalExpertCount: 8, topK: 2), generator: &g)
/// ```
public struct GateSpec: Sendable, Equatable, CustomStringConvertible {
    /// The name in configs and on the command line.
    public let name: String
    /// One line for `--help`.
    public let summary: String
    /// The `k` the gate always routes to (GShard 2, Switch 1), or nil for any `k`.
    public let fixedTopK: Int?
    /// Whether it drops slots beyond a capacity (and reads `GateOptions.capacityFactor`).
    public let hasCapacity: Bool
    /// Whether it returns a balance loss (otherwise routing may collapse onto a few experts).
    public let hasBalanceLoss: Bool
    let build: @Sendable (GateOptions, inout RandomGenerator) -> any Gate

    /// Builds the gate; a `k` other than `fixedTopK` stops with a message.
    public func make(_ options: GateOptions, generator: inout RandomGenerator) -> any Gate {
        if let k = fixedTopK {
            guarantee(options.topK == k, "GateSpec \(name): the \(name) gate routes to \(k) expert\(k == 1 ? "" : "s"), topK is \(options.topK)")
        }
        return build(options, &generator)
    }

    public static func == (a: GateSpec, b: GateSpec) -> Bool { a.name == b.name }
    public var description: String { name }

    /// The gates of the library, in the order `--help` lists them.
    public static let all: [GateSpec] = [.topK, .noisyTopK, .gshard, .switch, .zero]

    /// The row called `name`, or nil.
    public static func named(_ name: String) -> GateSpec? { all.first { $0.name == name } }

    /// `TopKGate` (FastMoE's `NaiveGate`).
    public static let topK = GateSpec(
        name: "topk", summary: "top-k of a linear gate, softmax over the k (FastMoE's NaiveGate; no balance loss)",
        fixedTopK: nil, hasCapacity: false, hasBalanceLoss: false) { o, g in
        TopKGate(dModel: o.dModel, globalExpertCount: o.globalExpertCount, topK: o.topK, zLossWeight: o.zLossWeight,
                 dtype: o.dtype, device: o.device, generator: &g)
    }

    /// `NoisyTopKGate`.
    public static let noisyTopK = GateSpec(
        name: "noisy", summary: "noisy top-k (Shazeer et al. 2017) with the importance and load balance losses",
        fixedTopK: nil, hasCapacity: false, hasBalanceLoss: true) { o, g in
        NoisyTopKGate(dModel: o.dModel, globalExpertCount: o.globalExpertCount, topK: o.topK, zLossWeight: o.zLossWeight,
                      dtype: o.dtype, device: o.device, generator: &g)
    }

    /// `GShardGate` (top-2).
    public static let gshard = GateSpec(
        name: "gshard", summary: "GShard's top-2 with capacity, random routing and its balance loss",
        fixedTopK: 2, hasCapacity: true, hasBalanceLoss: true) { o, g in
        GShardGate(dModel: o.dModel, globalExpertCount: o.globalExpertCount, trainingCapacityFactor: o.capacityFactor.training,
                   evalCapacityFactor: o.capacityFactor.eval, zLossWeight: o.zLossWeight, dtype: o.dtype, device: o.device, generator: &g)
    }

    /// `SwitchGate` (top-1).
    public static let `switch` = GateSpec(
        name: "switch", summary: "Switch Transformer's top-1 with capacity, input jitter and its balance loss",
        fixedTopK: 1, hasCapacity: true, hasBalanceLoss: true) { o, g in
        SwitchGate(dModel: o.dModel, globalExpertCount: o.globalExpertCount, trainingCapacityFactor: o.capacityFactor.training,
                   evalCapacityFactor: o.capacityFactor.eval, zLossWeight: o.zLossWeight, dtype: o.dtype, device: o.device, generator: &g)
    }

    /// `ZeroGate` (a test tool).
    public static let zero = GateSpec(
        name: "zero", summary: "every token to expert 0 (a test tool)",
        fixedTopK: nil, hasCapacity: false, hasBalanceLoss: false) { o, _ in
        ZeroGate(globalExpertCount: o.globalExpertCount, topK: o.topK)
    }
}
