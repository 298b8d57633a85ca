import MoE
import Tensors

/// Identifies the token stream a run trained on, so a resume on different data is caught.
public struct DataFingerprint: Equatable, Sendable {
    /// Where the tokens came from (a path, or "synthetic corpus …").
    public var source: String
    /// Tokens in the whole stream (training plus validation).
    public var tokenCount: Int
    /// FNV-1a (64-bit) over every token of the stream.
    public var hash: UInt64

    public init(source: String, tokenCount: Int, hash: UInt64) {
        self.source = source
        self.tokenCount = tokenCount
        self.hash = hash
    }

    /// The fingerprint of `dataset`'s two parts, in order.
    public init(_ dataset: TokenDataset) {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for part in [dataset.train, dataset.validation] {
            part.withUnsafeBufferPointer { buffer in
                for byte in buffer { h = (h ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
            }
        }
        self.init(source: dataset.source, tokenCount: dataset.train.count + dataset.validation.count, hash: h)
    }
}

/// `state.json` of a checkpoint: everything besides the tensors that a run needs to continue exactly.
///
/// ```json
/// {"format": "fastmoe-checkpoint", "format_version": 1, "library_version": "0.1.0", "step": 600,
///  "name": "tiny", "config": {"preset": "tiny", "layers": 4, …, "seed": "1337", …},
///  "sampler": {"seed": "1337", "counter": "9600"},
///  "generators": {"drop": {"seed": "…", "offset": "0"}, …},
///  "data": {"source": "synthetic corpus", "token_count": 2000000, "hash": "…"},
///  "elapsed_s": 120.5, "val_loss": 1.21}
/// ```
/// 64-bit integers (seeds, counters, hashes) are strings: JSON readers in other languages keep only
/// 53 bits of a number.
public struct TrainingState: Equatable, Sendable {
    /// Completed optimizer steps.
    public var step: Int
    public var config: RunConfig
    /// Where the training windows continue from.
    public var sampler: BatchSampler.State
    /// Generator states by module name (dropouts, noisy/GShard/Switch gates).
    public var generators: [String: RandomGenerator]
    public var data: DataFingerprint
    /// Wall-clock training seconds up to this step, over every resumption.
    public var elapsedSeconds: Double
    /// The last validation loss, when one was measured.
    public var valLoss: Double?
    /// The library that wrote the checkpoint.
    public var libraryVersion: String
    /// Steps up to `step` whose update was skipped (a non-finite gradient norm or, with
    /// `--skip-nonfinite`, loss): the optimizer's own step count is `step − skippedSteps`.
    public var skippedSteps: Int = 0
    /// Data-parallel ranks of the run (`--batch-size` windows each): the global batch is
    /// `worldSize · batchSize`, so a resume must have as many ranks. Written when above 1.
    public var worldSize: Int = 1

    public static let format = "fastmoe-checkpoint"
    public static let formatVersion = 1

    public init(step: Int, config: RunConfig, sampler: BatchSampler.State, generators: [String: RandomGenerator],
                data: DataFingerprint, elapsedSeconds: Double, valLoss: Double?, libraryVersion: String = FastMoEVersion.string) {
        self.step = step
        self.config = config
        self.sampler = sampler
        self.generators = generators
        self.data = data
        self.elapsedSeconds = elapsedSeconds
        self.valLoss = valLoss
        self.libraryVersion = libraryVersion
    }

    // MARK: JSON

    /// The JSON text of `state.json` (one member per line at the top level, for people reading it).
    public func jsonText() -> String {
        func generator(_ g: RandomGenerator) -> JSONValue {
            .object([JSONMember("seed", .string(String(g.seed))), JSONMember("offset", .string(String(g.offset)))])
        }
        var members: [JSONMember] = [
            JSONMember("format", .string(Self.format)),
            JSONMember("format_version", .int(Self.formatVersion)),
            JSONMember("library_version", .string(libraryVersion)),
            JSONMember("step", .int(step)),
            JSONMember("name", .string(config.name ?? "")),
            JSONMember("config", config.jsonValue),
            JSONMember("sampler", .object([JSONMember("seed", .string(String(sampler.seed))),
                                           JSONMember("counter", .string(String(sampler.counter)))])),
            JSONMember("generators", .object(generators.keys.sorted().map { JSONMember($0, generator(generators[$0]!)) })),
            JSONMember("data", .object([JSONMember("source", .string(data.source)), JSONMember("token_count", .int(data.tokenCount)),
                                        JSONMember("hash", .string(String(data.hash)))])),
            JSONMember("elapsed_s", .double(elapsedSeconds)),
        ]
        if let valLoss { members.append(JSONMember("val_loss", .double(valLoss))) }
        if skippedSteps > 0 { members.append(JSONMember("skipped_steps", .int(skippedSteps))) }
        if worldSize > 1 { members.append(JSONMember("world_size", .int(worldSize))) }
        return "{\n" + members.map { "  " + JSONValue.object([$0]).serialized().dropFirst().dropLast() }.joined(separator: ",\n") + "\n}\n"
    }

    /// Parses `state.json` text; `path` starts the messages.
    public static func parse(_ bytes: [UInt8], path: String) throws -> TrainingState {
        let damaged = "the checkpoint's state is damaged — use another checkpoint (or restore the file)"
        let root: JSONValue
        do { root = try JSONValue.parse(bytes) } catch {
            throw CheckpointError("\(path): not valid JSON (\(error.description)); \(damaged)")
        }
        guard root.members != nil else { throw CheckpointError("\(path): holds \(root.kindName), not a JSON object; \(damaged)") }
        func field(_ object: JSONValue, _ key: String, _ context: String = "") throws -> JSONValue {
            guard let v = object[key] else { throw CheckpointError("\(path): no '\(context)\(key)'; \(damaged)") }
            return v
        }
        func uint64(_ object: JSONValue, _ key: String, _ context: String) throws -> UInt64 {
            let v = try field(object, key, context)
            if let s = v.stringValue, let u = UInt64(s) { return u }
            if let i = v.intValue, i >= 0 { return UInt64(i) }
            throw CheckpointError("\(path): '\(context)\(key)' is \(v.serialized()), not an unsigned 64-bit integer; \(damaged)")
        }
        guard try field(root, "format").stringValue == format else {
            throw CheckpointError("\(path): 'format' is not \"\(format)\"; this is not a fastmoe checkpoint's state.json")
        }
        guard let version = try field(root, "format_version").intValue, version <= formatVersion else {
            throw CheckpointError("\(path): the checkpoint format is newer than this fastmoe (\(FastMoEVersion.string)) reads; "
                + "update fastmoe")
        }
        guard let step = try field(root, "step").intValue, step >= 0 else {
            throw CheckpointError("\(path): 'step' is not a non-negative integer; \(damaged)")
        }
        let configValue = try field(root, "config")
        guard let configMembers = configValue.members else { throw CheckpointError("\(path): 'config' is not an object; \(damaged)") }
        var values: [String: ConfigValue] = [:]
        for m in configMembers {
            switch m.value {
            case .int(let i): values[m.key] = .int(i)
            case .double(let d): values[m.key] = .double(d)
            case .string(let s): values[m.key] = .string(s)
            case .bool(let b): values[m.key] = .bool(b)
            default: throw CheckpointError("\(path): config '\(m.key)' is \(m.value.kindName); \(damaged)")
            }
        }
        var config: RunConfig
        do { config = try RunConfig.decoded(from: values, source: path + " config") } catch let e as RunConfigError {
            throw CheckpointError("\(e.description) (\(damaged))")
        }
        // Checkpoints from before `balance` existed routed with each gate's own balance (none for topk).
        if values["balance"] == nil, config.isMoE, let spec = config.gateSpec { config.balance = spec.defaultBalance.rawValue }
        do { try config.validate() } catch let e as RunConfigError {
            throw CheckpointError("\(path): the saved config is invalid: \(e.description); \(damaged)")
        }
        let samplerValue = try field(root, "sampler")
        let sampler = BatchSampler.State(seed: try uint64(samplerValue, "seed", "sampler."),
                                         counter: try uint64(samplerValue, "counter", "sampler."))
        var generators: [String: RandomGenerator] = [:]
        guard let generatorMembers = try field(root, "generators").members else {
            throw CheckpointError("\(path): 'generators' is not an object; \(damaged)")
        }
        for m in generatorMembers {
            generators[m.key] = RandomGenerator(seed: try uint64(m.value, "seed", "generators.\(m.key)."),
                                                offset: try uint64(m.value, "offset", "generators.\(m.key)."))
        }
        let dataValue = try field(root, "data")
        guard let source = try field(dataValue, "source", "data.").stringValue,
              let count = try field(dataValue, "token_count", "data.").intValue else {
            throw CheckpointError("\(path): 'data' needs a string 'source' and an integer 'token_count'; \(damaged)")
        }
        let data = DataFingerprint(source: source, tokenCount: count, hash: try uint64(dataValue, "hash", "data."))
        guard let elapsed = try field(root, "elapsed_s").doubleValue else {
            throw CheckpointError("\(path): 'elapsed_s' is not a number; \(damaged)")
        }
        let valLoss = root["val_loss"]?.doubleValue
        var state = TrainingState(step: step, config: config, sampler: sampler, generators: generators, data: data,
                                  elapsedSeconds: elapsed.isFinite ? elapsed : 0, valLoss: valLoss,
                                  libraryVersion: root["library_version"]?.stringValue ?? "unknown")
        if let skipped = root["skipped_steps"] {
            guard let n = skipped.intValue, n >= 0, n <= step else {
                throw CheckpointError("\(path): 'skipped_steps' is not an integer from 0 to 'step' (\(step)); \(damaged)")
            }
            state.skippedSteps = n
        }
        if let ranks = root["world_size"] {
            guard let n = ranks.intValue, n >= 1 else {
                throw CheckpointError("\(path): 'world_size' is not a positive integer; \(damaged)")
            }
            state.worldSize = n
        }
        return state
    }
}

extension RunConfig {
    /// The settings as a JSON object in key-table order; unset optional settings are left out.
    var jsonValue: JSONValue {
        .object(RunConfig.keyTable.compactMap { key in
            key.get(self).map { value in
                let json: JSONValue
                switch value {
                case .int(let i): json = .int(i)
                case .double(let d): json = .double(d)
                case .string(let s): json = .string(s)
                case .bool(let b): json = .bool(b)
                }
                return JSONMember(key.name, json)
            }
        })
    }

    /// The inverse of `jsonValue`: the saved preset's settings, every optional setting unset (through
    /// the key table, so a new optional needs no list here), then `values`. Settings a saved config
    /// lacks (written by an older fastmoe) keep the preset's value.
    static func decoded(from values: [String: ConfigValue], source: String) throws -> RunConfig {
        var config: RunConfig
        if case .string(let name)? = values["preset"], let base = try? RunConfig.preset(name) {
            config = base
        } else {
            config = RunConfig.tiny  // an unknown preset is reported by validate(), naming the value
        }
        for key in keyTable { key.clear?(&config) }
        try config.apply(values, source: source)
        return config
    }

    /// The differences in model architecture between a saved config and the expected one, as
    /// "d-model 32 vs 64, layers 2 vs 4" (saved first), or nil when they build the same modules.
    public static func architectureDifference(saved: RunConfig, expected: RunConfig) -> String? {
        func describe(_ c: RunConfig) -> [(String, String)] {
            var rows: [(String, String)] = [
                ("layers", String(c.layers)), ("d-model", String(c.dModel)), ("heads", String(c.heads)),
                ("seq-len", String(c.seqLen)), ("mlp-hidden", String(c.gptConfig.mlpHidden)), ("experts", String(c.experts)),
            ]
            if c.isMoE {
                rows += [("top-k", String(c.effectiveTopK)), ("gate", c.gate), ("moe-every", String(c.moeEvery)),
                         ("expert-hidden", String(c.initFrom != nil ? c.gptConfig.mlpHidden : (c.expertHidden ?? defaultExpertHidden(denseHidden: c.gptConfig.mlpHidden, topK: c.effectiveTopK)))),
                         ("shared-experts", String(c.sharedExperts)), ("balance", c.effectiveBalance?.rawValue ?? "?")]
            }
            return rows
        }
        let a = Dictionary(uniqueKeysWithValues: describe(saved)), b = describe(expected)
        let differences = b.compactMap { key, value -> String? in
            let other = a[key] ?? "none"
            return other == value ? nil : "\(key) \(other) vs \(value)"
        }
        return differences.isEmpty ? nil : differences.joined(separator: ", ")
    }
}
