// The one table of run settings: the key each is spelled by (config files, state.json, and the
// flags, which are the keys with dashes), how a value is read into the RunConfig, and how it is
// written back. The preset → file → flags layering, state.json and the command all go through it.

/// One setting of `RunConfig` by its key.
struct RunConfigKey {
    let name: String
    let get: (RunConfig) -> ConfigValue?
    /// Stores a value; throws a message fragment ("must be an integer, but it is …") on a wrong kind.
    let set: (inout RunConfig, ConfigValue) throws(KindMismatch) -> Void
    /// Unsets an optional setting (nil for the others): a saved config writes an optional only when
    /// it is set, so decoding one starts with every optional cleared through the table.
    var clear: ((inout RunConfig) -> Void)? = nil

    struct KindMismatch: Error { let expected: String }

    /// "an integer", or, for a whole number beyond Int (a JSON reader keeps it as a double), what is accepted.
    static func integerExpected(_ v: ConfigValue) -> KindMismatch {
        if case .double(let d) = v, d.isFinite, d == d.rounded(), Swift.abs(d) >= 9.2e18 {
            return KindMismatch(expected: "an integer from -9,223,372,036,854,775,808 to 9,223,372,036,854,775,807 "
                + "(this one is too large)")
        }
        return KindMismatch(expected: "an integer")
    }

    static func int(_ name: String, _ path: WritableKeyPath<RunConfig, Int>) -> RunConfigKey {
        RunConfigKey(name: name, get: { .int($0[keyPath: path]) }, set: { c, v throws(KindMismatch) in
            guard case .int(let i) = v else { throw integerExpected(v) }
            c[keyPath: path] = i
        })
    }

    static func optionalInt(_ name: String, _ path: WritableKeyPath<RunConfig, Int?>) -> RunConfigKey {
        RunConfigKey(name: name, get: { $0[keyPath: path].map { .int($0) } }, set: { c, v throws(KindMismatch) in
            guard case .int(let i) = v else { throw integerExpected(v) }
            c[keyPath: path] = i
        }, clear: { $0[keyPath: path] = nil })
    }

    static func double(_ name: String, _ path: WritableKeyPath<RunConfig, Double>) -> RunConfigKey {
        RunConfigKey(name: name, get: { .double($0[keyPath: path]) }, set: { c, v throws(KindMismatch) in
            switch v {
            case .double(let d): c[keyPath: path] = d
            case .int(let i): c[keyPath: path] = Double(i)
            default: throw KindMismatch(expected: "a number")
            }
        })
    }

    static func optionalDouble(_ name: String, _ path: WritableKeyPath<RunConfig, Double?>) -> RunConfigKey {
        RunConfigKey(name: name, get: { $0[keyPath: path].map { .double($0) } }, set: { c, v throws(KindMismatch) in
            switch v {
            case .double(let d): c[keyPath: path] = d
            case .int(let i): c[keyPath: path] = Double(i)
            default: throw KindMismatch(expected: "a number")
            }
        }, clear: { $0[keyPath: path] = nil })
    }

    static func string(_ name: String, _ path: WritableKeyPath<RunConfig, String>) -> RunConfigKey {
        RunConfigKey(name: name, get: { .string($0[keyPath: path]) }, set: { c, v throws(KindMismatch) in
            guard case .string(let s) = v else { throw KindMismatch(expected: "a string") }
            c[keyPath: path] = s
        })
    }

    static func optionalString(_ name: String, _ path: WritableKeyPath<RunConfig, String?>) -> RunConfigKey {
        RunConfigKey(name: name, get: { $0[keyPath: path].map { .string($0) } }, set: { c, v throws(KindMismatch) in
            guard case .string(let s) = v else { throw KindMismatch(expected: "a string") }
            c[keyPath: path] = s
        }, clear: { $0[keyPath: path] = nil })
    }

    /// The seed is written as a string (JSON readers such as JavaScript's lose integers above 2^53,
    /// and a UInt64 seed can be larger); an integer is accepted too.
    static let seed = RunConfigKey(name: "seed", get: { .string(String($0.seed)) }, set: { c, v throws(KindMismatch) in
        switch v {
        case .int(let i) where i >= 0: c.seed = UInt64(i)
        case .string(let s):
            guard let u = UInt64(s) else { throw KindMismatch(expected: "a non-negative integer (0 ... 2^64−1)") }
            c.seed = u
        default: throw KindMismatch(expected: "a non-negative integer (0 ... 2^64−1)")
        }
    })
}

extension RunConfig {
    /// Every setting, in the order state.json and `--help` list them.
    static let keyTable: [RunConfigKey] = [
        .string("preset", \.preset), .optionalString("name", \.name),
        .int("layers", \.layers), .int("d_model", \.dModel), .int("heads", \.heads), .int("seq_len", \.seqLen),
        .optionalInt("mlp_hidden", \.mlpHidden), .double("dropout", \.dropout),
        .int("batch_size", \.batchSize), .int("steps", \.steps), .double("lr", \.lr), .int("warmup", \.warmup),
        .double("weight_decay", \.weightDecay), .double("clip", \.clip), RunConfigKey.seed,
        .string("device", \.device), .string("precision", \.precision),
        .int("eval_every", \.evalEvery), .int("eval_batches", \.evalBatches), .int("checkpoint_every", \.checkpointEvery),
        .int("keep_checkpoints", \.keepCheckpoints), .int("log_every", \.logEvery),
        .optionalString("data", \.data), .double("val_fraction", \.valFraction), .int("corpus_bytes", \.corpusBytes),
        .optionalString("out", \.out),
        .int("experts", \.experts), .optionalInt("top_k", \.topK), .string("gate", \.gate), .int("moe_every", \.moeEvery),
        .optionalInt("expert_hidden", \.expertHidden), .optionalDouble("capacity_factor", \.capacityFactor),
        .double("balance_weight", \.balanceWeight), .double("z_loss_weight", \.zLossWeight),
        .optionalString("init_from", \.initFrom),
        .optionalString("balance", \.balance), .double("bias_update_rate", \.biasUpdateRate), .string("score", \.score),
        .double("seq_balance_weight", \.seqBalanceWeight), .int("shared_experts", \.sharedExperts),
        .optionalInt("expert_parallel", \.expertParallel), .string("expert_gradient", \.expertGradient),
        .string("balance_statistics", \.balanceStatistics),
    ]

    /// The keys a config file may set (with `_`; `-` is accepted in their place).
    public static var keys: [String] { keyTable.map(\.name) }

    /// `d-model` → `d_model`: one spelling for flags and file keys.
    public static func canonicalKey(_ key: String) -> String { String(key.map { $0 == "-" ? "_" : $0 }) }

    /// The key as its flag: `d_model` → `--d-model`.
    public static func flag(_ key: String) -> String { "--" + String(key.map { $0 == "_" ? "-" : $0 }) }

    /// Sets each of `values` (keys in either spelling). `source` starts messages: a file path, or
    /// "command line".
    public mutating func apply(_ values: [String: ConfigValue], source: String, lines: [String: Int] = [:]) throws {
        let table = Dictionary(uniqueKeysWithValues: Self.keyTable.map { ($0.name, $0) })
        for key in values.keys.sorted() {
            let value = values[key]!
            guard let entry = table[Self.canonicalKey(key)] else {
                let known = Set(Self.keys)
                let hint = closestKey(to: Self.canonicalKey(key), in: known).map { "; did you mean '\($0)'?" } ?? ";"
                throw RunConfigError("\(source): unknown setting '\(key)'\(hint) known settings: \(Self.keys.joined(separator: ", "))")
            }
            do {
                try entry.set(&self, value)
            } catch {
                let at = lines[key].map { " (line \($0))" } ?? ""
                let shown = source == "command line" ? Self.flag(key) : "'\(key)'"
                throw RunConfigError("\(source): \(shown)\(at) must be \(error.expected), but it is \(value.kindName), "
                    + "\(value); change the value")
            }
        }
    }

    /// The layered configuration: `preset` (or the file's `preset`, or `tiny`), then the config file
    /// at `configFile`, then `overrides` (the flags). Unknown keys in the file are an error naming
    /// their line. The result is not yet validated: call `validate()`.
    public static func resolve(preset: String? = nil, configFile: String? = nil,
                               overrides: [String: ConfigValue] = [:]) throws -> RunConfig {
        var fileValues: [String: ConfigValue] = [:]
        var fileLines: [String: Int] = [:]
        var fileSource = ""
        if let configFile {
            let file = try ConfigFile.load(path: configFile)
            fileSource = configFile
            // Both spellings may be used, but not both for one setting.
            for (key, value) in file.values {
                let canonical = canonicalKey(key)
                if let clash = fileValues.keys.first(where: { canonicalKey($0) == canonical }) {
                    throw RunConfigError("\(configFile): '\(clash)' and '\(key)' set the same setting; keep one of them")
                }
                fileValues[key] = value
                fileLines[key] = file.lines[key]
            }
            let normalized = ConfigFile(path: configFile,
                                        values: Dictionary(uniqueKeysWithValues: fileValues.map { (canonicalKey($0.key), $0.value) }),
                                        lines: Dictionary(uniqueKeysWithValues: fileLines.map { (canonicalKey($0.key), $0.value) }))
            try normalized.validateKeys(known: Set(keys))
        }
        func presetName(_ values: [String: ConfigValue], _ source: String) throws -> String? {
            guard let v = values.first(where: { canonicalKey($0.key) == "preset" })?.value else { return nil }
            guard case .string(let s) = v else { throw RunConfigError("\(source): 'preset' must be a string such as \"tiny\"") }
            return s
        }
        let chosen = try preset ?? presetName(overrides, "command line") ?? presetName(fileValues, fileSource) ?? "tiny"
        var config = try RunConfig.preset(chosen)
        if configFile != nil { try config.apply(fileValues, source: fileSource, lines: fileLines) }
        try config.apply(overrides, source: "command line")
        config.preset = chosen
        return config
    }
}
