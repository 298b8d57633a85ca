#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NN
import Tensors
import TestSupport
import Testing
@testable import Training

/// Issue 13's fuzz test: random and truncated bytes of every file a user hands `fastmoe` (config
/// files, a checkpoint's `state.json`, `model.safetensors` and `optimizer.safetensors`, and
/// `metrics.jsonl` as `fastmoe report` reads it), each given to the library reader the command line
/// uses. Every case must end in success or a thrown error whose message is one non-empty line; a
/// crash (`Fatal error`, a trap) ends the test process, which fails the run.
///
/// Bounded and seeded: a fixed number of cases per file from a fixed seed, so a failure repeats.
/// Set `FASTMOE_FUZZ_TRACE=DIR` to write each input to `DIR/<file>` before it is parsed: after a
/// crash, that file is the input that crashed (add it to `regressions`).
@Suite struct FuzzTests {
    /// 160 mutations per file; `FASTMOE_FUZZ_CASES=N` explores more (by hand, not in the suite).
    static let casesPerFile = getenv("FASTMOE_FUZZ_CASES").flatMap { Int(String(cString: $0)) } ?? 160

    enum Mutation: CaseIterable {
        case truncate, flipBytes, insertBytes, insertTokens, empty, hugeNumber, deepNesting, invalidUTF8, byteOrderMark, several
    }

    /// Fragments that steer a random insertion into the parsers' interesting branches.
    static let tokens: [String] = ["\"", "\\", "\\n", "\\u0000", "\\uD800", "\\u", ":", ",", "{", "}", "[", "]", "=", "#", "\n",
                                   "\r", "\r\n", "'", "'''", "\"\"\"", ".", "-", "+", "e", "E", "_", "nan", "inf", "-inf", "null",
                                   "true", "[[", "\t", "\0", "0x", "1e999", "-0", "{\"a\":{}}", "[]", "\"__metadata__\""]
    static let hugeNumbers: [String] = ["99999999999999999999999", "9223372036854775807", "9223372036854775808",
                                        "-9223372036854775808", "-9223372036854775809", "-1", "0", "1e309", "-1e309",
                                        "1e-400", "4611686018427387904", "2305843009213693952", "4294967296",
                                        "1" + String(repeating: "0", count: 400), "0.0000000000000000000001", "NaN", "1.5"]

    /// `seed` changed by `mutation`. `lengthPrefixed` files (safetensors) keep a consistent 8-byte
    /// header length half of the time, so the mutated header reaches the JSON and shape checks.
    static func mutate(_ seed: [UInt8], _ mutation: Mutation, lengthPrefixed: Bool, using g: inout TestSupport.SplitMix64) -> [UInt8] {
        if lengthPrefixed && seed.count >= 8 && mutation != .empty && mutation != .truncate && Bool.random(using: &g) {
            // Mutate only the header, then rewrite its length.
            let length = Int(seed[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
            let header = Array(seed[8..<(8 + length)])
            let body = Array(seed[(8 + length)...])
            let mutated = mutate(header, mutation, lengthPrefixed: false, using: &g)
            var field = [UInt8](repeating: 0, count: 8)
            var n = UInt64(mutated.count)
            for i in 0..<8 { field[i] = UInt8(n & 0xFF); n >>= 8 }
            return field + mutated + body
        }
        var bytes = seed
        switch mutation {
        case .truncate:
            bytes = Array(bytes.prefix(Int.random(in: 0...max(0, bytes.count - 1), using: &g)))
        case .flipBytes:
            for _ in 0..<Int.random(in: 1...8, using: &g) where !bytes.isEmpty {
                let i = Int.random(in: 0..<bytes.count, using: &g)
                bytes[i] ^= UInt8.random(in: 1...255, using: &g)
            }
            if lengthPrefixed && bytes.count >= 8 && Int.random(in: 0..<4, using: &g) == 0 {
                // A length field of random size, from 0 to 2⁶⁴ − 1.
                let i = Int.random(in: 0..<8, using: &g)
                bytes[i] = UInt8.random(in: 0...255, using: &g)
                if Bool.random(using: &g) { bytes[7] = 0xFF }
            }
        case .insertBytes:
            let i = Int.random(in: 0...bytes.count, using: &g)
            bytes.insert(contentsOf: (0..<Int.random(in: 1...16, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }, at: i)
        case .insertTokens:
            for _ in 0..<Int.random(in: 1...4, using: &g) {
                let i = Int.random(in: 0...bytes.count, using: &g)
                bytes.insert(contentsOf: Array(tokens.randomElement(using: &g)!.utf8), at: i)
            }
        case .empty:
            bytes = Bool.random(using: &g) ? [] : Array(["\n", " ", "{}", "\u{FEFF}", "[]", "\"\"", "0"].randomElement(using: &g)!.utf8)
        case .hugeNumber:
            // Replace one run of digits (a value, a length, an offset, a shape) with an extreme number.
            let runs = digitRuns(bytes)
            let number = Array(hugeNumbers.randomElement(using: &g)!.utf8)
            if let run = runs.randomElement(using: &g) {
                bytes.replaceSubrange(run, with: number)
            } else {
                bytes.insert(contentsOf: number, at: Int.random(in: 0...bytes.count, using: &g))
            }
        case .deepNesting:
            let depth = [64, 200, 1_000, 100_000].randomElement(using: &g)!
            let (open, close): (String, String) = [("[", "]"), ("{\"a\":", "}"), ("[{\"b\":", "}]")].randomElement(using: &g)!
            let nested = Array(String(repeating: open, count: depth).utf8) + Array("1".utf8) + Array(String(repeating: close, count: depth).utf8)
            // After a ':' or '=' when there is one (a value position), else anywhere.
            let valueStarts = bytes.indices.filter { bytes[$0] == UInt8(ascii: ":") || bytes[$0] == UInt8(ascii: "=") }
            let at = valueStarts.randomElement(using: &g).map { $0 + 1 } ?? Int.random(in: 0...bytes.count, using: &g)
            let end = bytes[at...].firstIndex { $0 == UInt8(ascii: ",") || $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "}") } ?? bytes.count
            bytes.replaceSubrange(at..<(Bool.random(using: &g) ? end : at), with: Bool.random(using: &g) ? nested : Array(nested.prefix(nested.count / 2)))
        case .invalidUTF8:
            let bad: [[UInt8]] = [[0xFF], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xC3], [0xE2, 0x82], [0x80]]
            bytes.insert(contentsOf: bad.randomElement(using: &g)!, at: Int.random(in: 0...bytes.count, using: &g))
        case .byteOrderMark:
            let bom: [UInt8] = [0xEF, 0xBB, 0xBF]
            switch Int.random(in: 0..<3, using: &g) {
            case 0: bytes = bom + bytes
            case 1: bytes = bom + bom + bytes
            default: bytes.insert(contentsOf: bom, at: Int.random(in: 0...bytes.count, using: &g))
            }
        case .several:
            for _ in 0..<Int.random(in: 2...4, using: &g) {
                let next = [Mutation.truncate, .flipBytes, .insertBytes, .insertTokens, .hugeNumber, .invalidUTF8].randomElement(using: &g)!
                bytes = mutate(bytes, next, lengthPrefixed: false, using: &g)
            }
        }
        return bytes
    }

    /// The index ranges of maximal runs of ASCII digits.
    static func digitRuns(_ bytes: [UInt8]) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        var start: Int?
        for (i, b) in bytes.enumerated() {
            let digit = b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")
            if digit && start == nil { start = i }
            if !digit, let s = start { runs.append(s..<i); start = nil }
        }
        if let s = start { runs.append(s..<bytes.count) }
        return runs
    }

    /// One kind of file: its valid seed and the reader the command line uses on it.
    struct Target {
        var file: String
        var seed: [UInt8]
        var lengthPrefixed = false
        /// Reads the file at `path` the way the command does; throws what the command would print.
        var read: (String) throws -> Void
    }

    /// Runs `target.read` over the seed, `regressions`, and `count` mutations of the seed. Returns
    /// how many cases succeeded and how many threw (each checked for a one-line message).
    static func fuzz(_ target: Target, in dir: TemporaryDirectory, seed: UInt64, count: Int,
                     regressions: [[UInt8]] = []) -> (passed: Int, refused: Int) {
        var g = TestSupport.SplitMix64(state: seed)
        let path = dir.file(target.file)
        let trace = getenv("FASTMOE_FUZZ_TRACE").map { String(cString: $0) + "/" + target.file }
        var passed = 0, refused = 0
        var inputs = [(target.seed, "seed")] + regressions.enumerated().map { ($0.element, "regression \($0.offset)") }
        for i in 0..<count {
            let mutation = Mutation.allCases[i % Mutation.allCases.count]
            inputs.append((mutate(target.seed, mutation, lengthPrefixed: target.lengthPrefixed, using: &g), "case \(i) (\(mutation))"))
        }
        for (bytes, label) in inputs {
            if let trace { writeRaw(bytes, to: trace) }
            writeRaw(bytes, to: path)
            do {
                try target.read(path)
                passed += 1
            } catch {
                refused += 1
                let message = "\(error)"
                #expect(!message.isEmpty, "\(target.file) \(label): an empty message for \(type(of: error))")
                #expect(!message.contains("\n") && !message.contains("\r"),
                        "\(target.file) \(label): the message is not one line: \(message)")
            }
        }
        return (passed, refused)
    }

    /// A trained 2-step MoE run (for real checkpoint files and metrics with expert load) and a
    /// trainer resumed from it (a model and an optimizer to load mutated files into).
    final class Fixture {
        let dir = TemporaryDirectory()
        let run: String
        let checkpoint: String
        let trainer: Trainer

        init() throws {
            run = try trainTinyRun(in: dir, steps: 2, ["experts": .int(4), "top_k": .int(2), "log_every": .int(1),
                                                       "eval_every": .int(1), "balance": .string("bias")])
            checkpoint = run + "/checkpoint-2"
            trainer = try Trainer.prepare(overrides: ["steps": .int(3)], resume: run)
        }

        func bytes(_ name: String) throws -> [UInt8] { try FileSystem.readFile(checkpoint + "/" + name) }

        /// state.json with a fixed elapsed time: the seed (and so every mutation) is the same on every run.
        func stateSeed() throws -> [UInt8] {
            var state = try Checkpoint.readState(checkpoint)
            state.elapsedSeconds = 12.5
            return Array(state.jsonText().utf8)
        }

        /// metrics.jsonl with fixed times and throughput, for the same reason.
        func metricsSeed() throws -> [UInt8] {
            let records = try MetricsLog.read(path: run + "/metrics.jsonl").map { record -> MetricsRecord in
                switch record {
                case .train(var r):
                    r.elapsedSeconds = Double(r.step) * 0.5
                    r.tokensPerSecond = 1_000
                    return .train(r)
                case .eval(var r):
                    r.elapsedSeconds = Double(r.step) * 0.5 + 0.25
                    return .eval(r)
                }
            }
            return Array(records.map { MetricsLog.jsonLine($0) + "\n" }.joined().utf8)
        }
    }

    static let tomlConfig = """
        # a run config
        preset = "tiny"
        name = 'fuzz'
        layers = 2
        d_model = 32
        heads = 2
        seq_len = 16
        batch_size = 8
        lr = 3e-3
        dropout = 0.0
        corpus_bytes = 60_000

        [moe]
        experts = 4
        top_k = 2
        gate = "topk"
        """

    static let jsonConfig = """
        {"preset": "tiny", "name": "fuzz", "layers": 2, "d_model": 32, "heads": 2, "seq_len": 16,
         "batch_size": 8, "lr": 3e-3, "dropout": 0.0, "corpus_bytes": 60000,
         "moe": {"experts": 4, "top_k": 2, "gate": "topk"}}
        """

    /// What `train --config` does with the file before anything is allocated: parse, merge into the
    /// preset, validate, and estimate the memory (against a fixed budget, so a large but valid
    /// config is refused here instead of being built).
    static func readConfig(_ path: String) throws {
        var config = try RunConfig.resolve(configFile: path)
        try config.validate()
        config.out = nil
        try MemoryEstimate(config, purpose: .training, dataBytes: config.corpusBytes).check(available: Double(1 << 30), source: "fuzz budget")
    }

    @Test func configFiles() {
        let dir = TemporaryDirectory()
        for (file, text, seed) in [("run.toml", Self.tomlConfig, UInt64(13)), ("run.json", Self.jsonConfig, 14)] {
            let target = Target(file: file, seed: Array(text.utf8), read: Self.readConfig)
            let (passed, refused) = Self.fuzz(target, in: dir, seed: seed, count: Self.casesPerFile,
                                              regressions: Self.configRegressions[file] ?? [])
            // The seed is valid; most mutations are refused.
            #expect(passed >= 1 && refused > Self.casesPerFile / 2, "\(file): \(passed) passed, \(refused) refused")
        }
    }

    /// Inputs that once crashed or hung a config reader.
    static let configRegressions: [String: [[UInt8]]] = [
        "run.toml": [
            // A carriage return inside a line was quoted raw, breaking the message over two lines.
            Array("layers = 2\rpreset = \"tiny\"\n".utf8),
            // 4 · d-model (the default MLP width) overflowed Int: a crash.
            Array("d_model = 4611686018427387904\nheads = 1\n".utf8),
            // A d-model that heads does not divide: the "use a divisor" hint counted to 10¹⁸ (a hang).
            Array("d_model = 1000000000000000001\nheads = 2\n".utf8),
            Array("gate = \"top\\nk\"\nexperts = 4\n".utf8),
        ],
        "run.json": [
            // A key or a value with an escaped newline was quoted as a real one.
            Array("{\"lay\\ners\": 2}".utf8),
            Array("{\"experts\": 4, \"gate\": \"top\\r\\nk\"}".utf8),
            Array("{\"seq_len\": 9223372036854775807, \"batch_size\": 9223372036854775807}".utf8),
        ],
    ]

    @Test func checkpointFiles() throws {
        let fixture = try Fixture()
        let trainer = fixture.trainer
        let config = trainer.config
        let model = try fixture.bytes(Checkpoint.modelFile)
        let modelFile = try SafeTensors.read(path: fixture.checkpoint + "/" + Checkpoint.modelFile)
        let dir = TemporaryDirectory()

        // state.json as `eval` and `--resume` read it: parsed, checked against the tensors, estimated.
        let state = Target(file: Checkpoint.stateFile, seed: try fixture.stateSeed()) { path in
            let state = try TrainingState.parse(try FileSystem.readFile(path), path: path)
            try Checkpoint.checkSavedConfig(state.config, against: modelFile, path: "model.safetensors", statePath: path)
            try MemoryEstimate(state.config, purpose: .loadingModel).check(available: Double(1 << 30), source: "fuzz budget")
        }
        // model.safetensors: read, checked against the saved config, loaded into the model.
        let weights = Target(file: Checkpoint.modelFile, seed: model, lengthPrefixed: true) { path in
            let file = try Checkpoint.readSafeTensors(path)
            try Checkpoint.checkSavedConfig(config, against: file, path: path, statePath: "state.json")
            try Checkpoint.loadModel(trainer.model, from: file, path: path, savedConfig: config, expectedConfig: config)
        }
        // optimizer.safetensors: loaded into the AdamW of the resumed run.
        let optimizer = Target(file: Checkpoint.optimizerFile, seed: try fixture.bytes(Checkpoint.optimizerFile),
                               lengthPrefixed: true) { _ in
            try Checkpoint.loadOptimizer(trainer.optimizer, from: dir.path, device: .cpu)
        }
        // Saved configs with an overflowing width and with a newline in a name the message quotes.
        let stateText = String(decoding: state.seed, as: UTF8.self)
        let stateRegressions = [stateText.replacingFirst("\"d_model\":32,", with: "\"d_model\":4611686018427387904,"),
                                stateText.replacingFirst("\"gate\":\"topk\"", with: "\"gate\":\"top\\nk\"")]
        #expect(stateRegressions.allSatisfy { $0 != stateText }, "state.json changed its layout: update the regressions")
        for (target, seed) in [(state, UInt64(1)), (weights, UInt64(2)), (optimizer, UInt64(3))] {
            let regressions = Self.checkpointRegressions[target.file] ?? (target.file == state.file ? stateRegressions.map { Array($0.utf8) } : [])
            let (passed, refused) = Self.fuzz(target, in: dir, seed: seed, count: Self.casesPerFile, regressions: regressions)
            #expect(passed >= 1 && refused > Self.casesPerFile / 2, "\(target.file): \(passed) passed, \(refused) refused")
        }
    }

    /// Inputs that once crashed a checkpoint reader.
    static let checkpointRegressions: [String: [[UInt8]]] = [
        // A tensor name with an escaped newline (header length kept consistent).
        Checkpoint.modelFile: [safetensors(header: "{\"a\\nb\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", body: [0, 0, 0, 0])],
        Checkpoint.optimizerFile: [safetensors(header: "{\"step\\r\": {\"dtype\": \"I32\", \"shape\": [], \"data_offsets\": [0, 4]}}", body: [1, 0, 0, 0])],
    ]

    /// A safetensors file of `header` (JSON) and `body`, with a consistent length field.
    static func safetensors(header: String, body: [UInt8]) -> [UInt8] {
        var n = UInt64(header.utf8.count)
        var field = [UInt8](repeating: 0, count: 8)
        for i in 0..<8 { field[i] = UInt8(n & 0xFF); n >>= 8 }
        return field + Array(header.utf8) + body
    }

    /// metrics.jsonl as `fastmoe report` reads it (with the run's state.json beside it), and as a
    /// resume trims it to its checkpoint.
    @Test func metricsFiles() throws {
        let fixture = try Fixture()
        let dir = TemporaryDirectory()
        writeRaw(try fixture.stateSeed(), to: dir.file(Checkpoint.stateFile))
        let metrics = Target(file: "metrics.jsonl", seed: try fixture.metricsSeed()) { _ in
            try ReportWriter.writeReport(runDirectory: dir.path)
            _ = try MetricsLog.dropRecords(after: 1, in: dir.path)
        }
        let (passed, refused) = Self.fuzz(metrics, in: dir, seed: 4, count: Self.casesPerFile, regressions: Self.metricsRegressions)
        // A damaged last line is skipped, so more mutations pass here than for the other files.
        #expect(passed >= 1 && refused >= Self.casesPerFile / 4, "metrics.jsonl: \(passed) passed, \(refused) refused")
    }

    /// Inputs that once crashed the report.
    static let metricsRegressions: [[UInt8]] = [
        Array("{\"kind\": \"tr\\nain\", \"step\": 1}\n".utf8),
        Array("{\"kind\":\"eval\",\"step\":9223372036854775807,\"val_loss\":1e308,\"elapsed_s\":-1e308}\n".utf8),
        Array("{\"kind\":\"eval\",\"step\":-9223372036854775808,\"val_loss\":-1,\"elapsed_s\":0}\n".utf8),
        // The summary table's duration converted 1e300 seconds to Int: a crash.
        Array("{\"kind\":\"eval\",\"step\":1,\"val_loss\":1.5,\"elapsed_s\":1e300}\n".utf8),
    ]
}
