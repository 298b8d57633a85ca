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
    /// For gates with a capacity (expert choice reads `training` as its `cf`).
    public var capacityFactor: CapacityFactor
    /// How a token-choice gate balances its experts; nil = the row's `defaultBalance`.
    public var balance: RoutingBalance?
    /// `γ` of `balance: .bias`.
    public var biasUpdateRate: Double
    /// What the combine weights come from (gates whose row lists `.sigmoid`).
    public var score: RouterScore
    public var dtype: DType
    public var device: Device

    public init(dModel: Int, globalExpertCount: Int, topK: Int, zLossWeight: Double = 0,
                capacityFactor: CapacityFactor = CapacityFactor(), balance: RoutingBalance? = nil,
                biasUpdateRate: Double = RouterBias.defaultUpdateRate, score: RouterScore = .softmax,
                dtype: DType = .float32, device: Device = .cpu) {
        self.dModel = dModel
        self.globalExpertCount = globalExpertCount
        self.topK = topK
        self.zLossWeight = zLossWeight
        self.capacityFactor = capacityFactor
        self.balance = balance
        self.biasUpdateRate = biasUpdateRate
        self.score = score
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
    /// The balances it supports (`GateOptions.balance`).
    public let balances: [RoutingBalance]
    /// Its balance when none is asked for: what the gate is without options (`.none` for FastMoE's
    /// top-k gate; the trainer's default, `RunConfig.defaultBalance`, replaces a `.none` it supports).
    public let defaultBalance: RoutingBalance
    /// The score functions it supports (the first is the default).
    public let scores: [RouterScore]
    /// False when the experts choose the tokens (expert choice): `k` then follows from the capacity
    /// factor (`round(cf)`), and `--top-k` does not apply.
    public let tokenChoice: Bool
    /// The training capacity factor when none is given (gates with a capacity).
    public let defaultCapacityFactor: Double
    /// A line for `--help` when the gate has a trap users must know (expert choice is not causal).
    public let note: String?
    /// Whether its combine weights are normalised over the `k` chosen experts (softmax or sigmoid
    /// over the k): with `k = 1` every weight is then 1, and the loss gives the gate no gradient.
    public let weightsNormalizedOverK: Bool
    let build: @Sendable (GateOptions, inout RandomGenerator) -> any Gate

    init(name: String, summary: String, fixedTopK: Int?, hasCapacity: Bool, hasBalanceLoss: Bool,
         balances: [RoutingBalance] = [.none], defaultBalance: RoutingBalance = .none, scores: [RouterScore] = [.softmax],
         tokenChoice: Bool = true, defaultCapacityFactor: Double = 1.2, note: String? = nil, weightsNormalizedOverK: Bool = false,
         build: @escaping @Sendable (GateOptions, inout RandomGenerator) -> any Gate) {
        (self.name, self.summary, self.fixedTopK, self.hasCapacity, self.hasBalanceLoss) = (name, summary, fixedTopK, hasCapacity, hasBalanceLoss)
        (self.balances, self.defaultBalance, self.scores, self.tokenChoice, self.defaultCapacityFactor, self.note) =
            (balances, defaultBalance, scores, tokenChoice, defaultCapacityFactor, note)
        self.weightsNormalizedOverK = weightsNormalizedOverK
        self.build = build
    }

    /// Builds the gate; a `k` other than `fixedTopK`, or a balance or score the row does not list,
    /// stops with a message.
    public func make(_ options: GateOptions, generator: inout RandomGenerator) -> any Gate {
        if let k = fixedTopK {
            guarantee(options.topK == k, "GateSpec \(name): the \(name) gate routes to \(k) expert\(k == 1 ? "" : "s"), topK is \(options.topK)")
        }
        guarantee(balances.contains(options.balance ?? defaultBalance),
                  "GateSpec \(name): balance \(options.balance!) is not one of \(balances.map(\.rawValue))")
        guarantee(scores.contains(options.score), "GateSpec \(name): score \(options.score) is not one of \(scores.map(\.rawValue))")
        return build(options, &generator)
    }

    public static func == (a: GateSpec, b: GateSpec) -> Bool { a.name == b.name }
    public var description: String { name }

    /// The gates of the library, in the order `--help` lists them.
    public static let all: [GateSpec] = [.topK, .noisyTopK, .gshard, .switch, .expertChoice, .zero]

    /// The row called `name`, or nil.
    public static func named(_ name: String) -> GateSpec? { all.first { $0.name == name } }

    /// `TopKGate` (FastMoE's `NaiveGate`).
    public static let topK = GateSpec(
        name: "topk", summary: "top-k of a linear gate, softmax (or --score sigmoid) over the k (FastMoE's NaiveGate; "
            + "balanced by --balance bias or aux, FastMoE's exact gate with --balance none)",
        fixedTopK: nil, hasCapacity: false, hasBalanceLoss: false, balances: [.aux, .bias, .none], defaultBalance: .none,
        scores: [.softmax, .sigmoid], weightsNormalizedOverK: true) { o, g in
        TopKGate(dModel: o.dModel, globalExpertCount: o.globalExpertCount, topK: o.topK, zLossWeight: o.zLossWeight,
                 balance: o.balance ?? .none, score: o.score, biasUpdateRate: o.biasUpdateRate,
                 dtype: o.dtype, device: o.device, generator: &g)
    }

    /// `NoisyTopKGate`.
    public static let noisyTopK = GateSpec(
        name: "noisy", summary: "noisy top-k (Shazeer et al. 2017) with the importance and load balance losses",
        fixedTopK: nil, hasCapacity: false, hasBalanceLoss: true, balances: [.aux, .bias, .none], defaultBalance: .aux,
        weightsNormalizedOverK: true) { o, g in
        NoisyTopKGate(dModel: o.dModel, globalExpertCount: o.globalExpertCount, topK: o.topK, zLossWeight: o.zLossWeight,
                      balance: o.balance ?? .aux, biasUpdateRate: o.biasUpdateRate, dtype: o.dtype, device: o.device, generator: &g)
    }

    /// `GShardGate` (top-2).
    public static let gshard = GateSpec(
        name: "gshard", summary: "GShard's top-2 with capacity, random routing and its balance loss",
        fixedTopK: 2, hasCapacity: true, hasBalanceLoss: true, balances: [.aux, .bias, .none], defaultBalance: .aux) { o, g in
        GShardGate(dModel: o.dModel, globalExpertCount: o.globalExpertCount, trainingCapacityFactor: o.capacityFactor.training,
                   evalCapacityFactor: o.capacityFactor.eval, zLossWeight: o.zLossWeight,
                   balance: o.balance ?? .aux, biasUpdateRate: o.biasUpdateRate, dtype: o.dtype, device: o.device, generator: &g)
    }

    /// `SwitchGate` (top-1).
    public static let `switch` = GateSpec(
        name: "switch", summary: "Switch Transformer's top-1 with capacity, input jitter and its balance loss",
        fixedTopK: 1, hasCapacity: true, hasBalanceLoss: true, balances: [.aux, .bias, .none], defaultBalance: .aux) { o, g in
        SwitchGate(dModel: o.dModel, globalExpertCount: o.globalExpertCount, trainingCapacityFactor: o.capacityFactor.training,
                   evalCapacityFactor: o.capacityFactor.eval, zLossWeight: o.zLossWeight,
                   balance: o.balance ?? .aux, biasUpdateRate: o.biasUpdateRate, dtype: o.dtype, device: o.device, generator: &g)
    }

    /// `ExpertChoiceGate`.
    public static let expertChoice = GateSpec(
        name: "expert-choice", summary: "expert choice (Zhou et al. 2022): each expert takes its top C = cf·T/N tokens "
            + "(--capacity-factor, default 2), balanced by construction",
        fixedTopK: nil, hasCapacity: true, hasBalanceLoss: false, tokenChoice: false, defaultCapacityFactor: 2,
        note: "expert-choice is not causal (a token's experts depend on the whole batch, later tokens included); "
            + "evaluation and generation route each token to the top round(cf) experts of the same scores") { o, g in
        ExpertChoiceGate(dModel: o.dModel, globalExpertCount: o.globalExpertCount, capacityFactor: o.capacityFactor.training,
                         zLossWeight: o.zLossWeight, dtype: o.dtype, device: o.device, generator: &g)
    }

    /// `ZeroGate` (a test tool).
    public static let zero = GateSpec(
        name: "zero", summary: "every token to expert 0 (a test tool)",
        fixedTopK: nil, hasCapacity: false, hasBalanceLoss: false) { o, _ in
        ZeroGate(globalExpertCount: o.globalExpertCount, topK: o.topK)
    }
}
