// The run's metrics, appended as they happen to OUT/metrics.jsonl (the record of truth, read back by
// the report) and OUT/metrics.csv (for spreadsheets and quick plots). Both are flushed after every
// record, so a crash loses nothing already logged and `tail -f` shows progress.
import MoE
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The expert load of one MoE layer over one logging interval.
public struct MoELayerLoad: Equatable, Sendable {
    /// Index of the MoE layer in the model.
    public var layer: Int
    /// Tokens routed to each expert (length = number of experts).
    public var counts: [Int]
    /// Fraction of token-slots dropped for lack of expert capacity.
    public var droppedFraction: Double
    /// Largest count over the mean count: 1 is perfect balance.
    public var maxOverMean: Double
    /// Coefficient of variation of the counts (population standard deviation over mean).
    public var cv: Double
    /// Entropy in nats of the counts' shares; log(experts) is perfect balance.
    public var entropy: Double
    /// The routing bias `b` at the end of the interval (`--balance bias`), else nil (key absent).
    public var bias: [Double]?
    /// Expert choice: the fraction of evaluation-routing slots its training routing did not choose.
    public var routingDisagreement: Double?

    public init(layer: Int, counts: [Int], droppedFraction: Double, maxOverMean: Double, cv: Double, entropy: Double) {
        self.layer = layer
        self.counts = counts
        self.droppedFraction = droppedFraction
        self.maxOverMean = maxOverMean
        self.cv = cv
        self.entropy = entropy
    }

    /// A load record with max/mean, cv and entropy computed from `counts` (`LoadStatistics`' formulas).
    /// All three are 0 when no token was routed (there is no distribution to measure).
    public init(layer: Int, counts: [Int], droppedFraction: Double) {
        self.init(layer: layer, counts: counts, droppedFraction: droppedFraction,
                  maxOverMean: LoadStatistics.maxOverMean(counts), cv: LoadStatistics.coefficientOfVariation(counts),
                  entropy: LoadStatistics.entropy(counts))
    }

    /// One record per MoE layer of a logging interval: the routed counts and the dropped fraction. The
    /// layer number is the Transformer block's index (`blocks.3.mlp` → 3), else its place in the model.
    public static func records(_ interval: [(name: String, load: LoadStatistics)]) -> [MoELayerLoad] {
        interval.enumerated().map { index, layer in
            MoELayerLoad(layer: blockIndex(layer.name) ?? index, counts: layer.load.routedCounts,
                         droppedFraction: layer.load.droppedFraction)
        }
    }

    /// `records` with each layer's routing bias and routing disagreement (`LoadMonitor.intervalRouting()`).
    public static func records(_ interval: [LayerRouting]) -> [MoELayerLoad] {
        interval.enumerated().map { index, layer in
            var record = MoELayerLoad(layer: blockIndex(layer.name) ?? index, counts: layer.load.routedCounts,
                                      droppedFraction: layer.load.droppedFraction)
            record.bias = layer.bias
            record.routingDisagreement = layer.routingDisagreement
            return record
        }
    }

    static func blockIndex(_ name: String) -> Int? {
        let parts = name.split(separator: ".")
        guard let i = parts.firstIndex(of: "blocks"), i + 1 < parts.count else { return nil }
        return Int(parts[i + 1])
    }
}

/// A training-step record: `{"kind":"train","step":N,"loss":x,"lr":x,"tokens_per_s":x,"elapsed_s":x,"moe":[...]}`.
public struct TrainRecord: Equatable, Sendable {
    public var step: Int
    /// Mean training loss (nats per token) over the logging interval.
    public var loss: Double
    /// Learning rate at this step.
    public var lr: Double
    /// Training throughput over the interval.
    public var tokensPerSecond: Double
    /// Wall-clock seconds since the run started.
    public var elapsedSeconds: Double
    /// Per-layer expert load; nil for dense runs (the key is then absent).
    public var moe: [MoELayerLoad]?
    /// Warnings about the run at this step (a collapsed routing, with the flag that fixes it).
    public var warnings: [String] = []

    public init(step: Int, loss: Double, lr: Double, tokensPerSecond: Double, elapsedSeconds: Double,
                moe: [MoELayerLoad]? = nil) {
        self.step = step
        self.loss = loss
        self.lr = lr
        self.tokensPerSecond = tokensPerSecond
        self.elapsedSeconds = elapsedSeconds
        self.moe = moe
    }
}

/// An evaluation record: `{"kind":"eval","step":N,"val_loss":x,"elapsed_s":x}`.
public struct EvalRecord: Equatable, Sendable {
    public var step: Int
    /// Mean loss over the fixed validation batches.
    public var valLoss: Double
    /// Wall-clock seconds since the run started.
    public var elapsedSeconds: Double

    public init(step: Int, valLoss: Double, elapsedSeconds: Double) {
        self.step = step
        self.valLoss = valLoss
        self.elapsedSeconds = elapsedSeconds
    }
}

/// One line of `metrics.jsonl`.
public enum MetricsRecord: Equatable, Sendable {
    case train(TrainRecord)
    case eval(EvalRecord)

    /// The record's step.
    public var step: Int {
        switch self {
        case .train(let r): return r.step
        case .eval(let r): return r.step
        }
    }
}

/// A metrics file could not be written or read back; the message names the file and line.
public struct MetricsError: Error, CustomStringConvertible, Sendable {
    /// The whole message, ready to print: one line (control characters escaped).
    public let description: String

    public init(description: String) { self.description = description.oneLine }
}

/// Appends metrics records to `DIR/metrics.jsonl` and `DIR/metrics.csv`.
///
/// Non-finite numbers (a diverged loss) are written as JSON `null` and read back as NaN. Opening an
/// existing log appends to it, so a resumed run keeps one history; readers that plot by step should
/// keep the last record of a repeated step (``ReportWriter`` does).
///
/// ```swift
/// let log = try MetricsLog(directory: "runs/moe-8e")
/// try log.append(.train(TrainRecord(step: 10, loss: 3.2, lr: 3e-4, tokensPerSecond: 51_000, elapsedSeconds: 4.2)))
/// try log.append(.eval(EvalRecord(step: 10, valLoss: 3.1, elapsedSeconds: 4.9)))
/// let records = try MetricsLog.read(path: "runs/moe-8e/metrics.jsonl")
/// ```
public final class MetricsLog {
    /// The directory holding the two files.
    public let directory: String
    /// `DIR/metrics.jsonl`.
    public var jsonlPath: String { directory + "/metrics.jsonl" }
    /// `DIR/metrics.csv`.
    public var csvPath: String { directory + "/metrics.csv" }
    /// Column names of the CSV file, in order.
    public static let csvColumns = ["kind", "step", "loss", "val_loss", "lr", "tokens_per_s", "elapsed_s"]

    var jsonl: UnsafeMutablePointer<FILE>?
    var csv: UnsafeMutablePointer<FILE>?

    /// Opens (creating `directory` and the files if needed) the two logs for appending.
    public init(directory: String) throws {
        self.directory = directory
        try FileSystem.makeDirectories(directory)
        jsonl = try MetricsLog.openForAppend(directory + "/metrics.jsonl")
        do {
            let csvFile = try MetricsLog.openForAppend(directory + "/metrics.csv")
            csv = csvFile
            // The header goes in once, when the file is new; a resumed run appends below it.
            if ftello(csvFile) == 0 {
                try write(MetricsLog.csvColumns.joined(separator: ",") + "\n", to: csvFile, path: csvPath)
            }
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    static func openForAppend(_ path: String) throws -> UnsafeMutablePointer<FILE> {
        guard let file = fopen(path, "a") else {
            throw MetricsError(description: "\(path): cannot open for appending (\(String(cString: strerror(errno)))); "
                + "check that the output directory is writable")
        }
        fseeko(file, 0, SEEK_END)  // so ftello reports the size: position of "a" streams is unspecified until a write
        return file
    }

    /// Appends `record` to both files and flushes them.
    public func append(_ record: MetricsRecord) throws {
        guard let jsonl, let csv else {
            fatalError("MetricsLog.append after close()")
        }
        try write(MetricsLog.jsonLine(record) + "\n", to: jsonl, path: jsonlPath)
        try write(MetricsLog.csvLine(record) + "\n", to: csv, path: csvPath)
    }

    /// Closes the files; later appends are a programming error. Called by `deinit` too.
    public func close() {
        if let jsonl { fclose(jsonl) }
        if let csv { fclose(csv) }
        jsonl = nil
        csv = nil
    }

    func write(_ text: String, to file: UnsafeMutablePointer<FILE>, path: String) throws {
        if fputs(text, file) < 0 || fflush(file) != 0 {
            throw MetricsError(description: "\(path): cannot write (\(String(cString: strerror(errno)))); "
                + "check free disk space")
        }
    }

    // MARK: Encoding

    static func jsonLine(_ record: MetricsRecord) -> String {
        switch record {
        case .train(let r):
            var members = [
                JSONMember("kind", .string("train")),
                JSONMember("step", .int(r.step)),
                JSONMember("loss", .double(r.loss)),
                JSONMember("lr", .double(r.lr)),
                JSONMember("tokens_per_s", .double(r.tokensPerSecond)),
                JSONMember("elapsed_s", .double(r.elapsedSeconds)),
            ]
            if let moe = r.moe {
                members.append(JSONMember("moe", .array(moe.map { load in
                    .object([
                        JSONMember("layer", .int(load.layer)),
                        JSONMember("counts", .array(load.counts.map { .int($0) })),
                        JSONMember("dropped_fraction", .double(load.droppedFraction)),
                        JSONMember("max_over_mean", .double(load.maxOverMean)),
                        JSONMember("cv", .double(load.cv)),
                        JSONMember("entropy", .double(load.entropy)),
                    ] + (load.bias.map { [JSONMember("bias", .array($0.map { .double($0) }))] } ?? [])
                      + (load.routingDisagreement.map { [JSONMember("routing_disagreement", .double($0))] } ?? []))
                })))
            }
            if !r.warnings.isEmpty { members.append(JSONMember("warnings", .array(r.warnings.map { .string($0) }))) }
            return JSONValue.object(members).serialized()
        case .eval(let r):
            return JSONValue.object([
                JSONMember("kind", .string("eval")),
                JSONMember("step", .int(r.step)),
                JSONMember("val_loss", .double(r.valLoss)),
                JSONMember("elapsed_s", .double(r.elapsedSeconds)),
            ]).serialized()
        }
    }

    /// kind,step,loss,val_loss,lr,tokens_per_s,elapsed_s; cells a record does not have are empty.
    static func csvLine(_ record: MetricsRecord) -> String {
        func number(_ x: Double) -> String { x.isFinite ? x.description : (x.isNaN ? "nan" : (x > 0 ? "inf" : "-inf")) }
        switch record {
        case .train(let r):
            return ["train", String(r.step), number(r.loss), "", number(r.lr), number(r.tokensPerSecond),
                    number(r.elapsedSeconds)].joined(separator: ",")
        case .eval(let r):
            return ["eval", String(r.step), "", number(r.valLoss), "", "", number(r.elapsedSeconds)].joined(separator: ",")
        }
    }

    // MARK: Reading

    /// Reads every record of a `metrics.jsonl` file.
    ///
    /// A last line without its newline that does not parse is skipped: it is a record the process was
    /// killed while writing. Any other malformed line is an error naming the line.
    public static func read(path: String) throws -> [MetricsRecord] {
        let bytes: [UInt8]
        do {
            bytes = try FileSystem.readFile(path)
        } catch let error as FileSystemError {
            throw MetricsError(description: "\(path): cannot read the metrics (\(error.reason ?? error.description)); "
                + "check that the run directory has a metrics.jsonl")
        }
        let lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        var records: [MetricsRecord] = []
        for (index, line) in lines.enumerated() {
            if line.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") }) { continue }
            let isUnterminatedLast = index == lines.count - 1
            // A Result rather than do/catch: this toolchain's compiler crashes on `continue` in that catch.
            switch Result(catching: { try parseLine(line) }) {
            case .success(let record):
                records.append(record)
            case .failure(let error):
                if isUnterminatedLast { continue }
                let reason = (error as? MetricsLineError)?.text ?? "\(error)"
                throw MetricsError(description: "\(path), line \(index + 1): \(reason); "
                    + "the file was edited or damaged — fix or delete that line")
            }
        }
        return records
    }

    struct MetricsLineError: Error { var text: String }

    static func parseLine(_ line: ArraySlice<UInt8>) throws -> MetricsRecord {
        let value: JSONValue
        do {
            value = try JSONValue.parse(line)
        } catch {
            throw MetricsLineError(text: "not valid JSON (\(error.description))")
        }
        guard value.members != nil else { throw MetricsLineError(text: "\(value.kindName), not a JSON object") }
        func field<T>(_ object: JSONValue, _ key: String, _ kind: String, _ get: (JSONValue) -> T?) throws -> T {
            guard let raw = object[key] else { throw MetricsLineError(text: "missing key '\(key)'") }
            guard let typed = get(raw) else {
                throw MetricsLineError(text: "'\(key)' is \(raw.kindName), expected \(kind)")
            }
            return typed
        }
        let number: (JSONValue) -> Double? = { $0.doubleValue }
        let integer: (JSONValue) -> Int? = { $0.intValue }
        let kind = try field(value, "kind", "a string", { $0.stringValue })
        switch kind {
        case "train":
            var moe: [MoELayerLoad]?
            if let raw = value["moe"] {
                guard let layers = raw.arrayValue else { throw MetricsLineError(text: "'moe' is \(raw.kindName), expected an array") }
                moe = []
                for layer in layers {
                    let counts = try field(layer, "counts", "an array of integers") { v -> [Int]? in
                        guard let items = v.arrayValue else { return nil }
                        let ints = items.compactMap(\.intValue)
                        return ints.count == items.count ? ints : nil
                    }
                    var record = MoELayerLoad(
                        layer: try field(layer, "layer", "an integer", integer), counts: counts,
                        droppedFraction: try field(layer, "dropped_fraction", "a number", number),
                        maxOverMean: try field(layer, "max_over_mean", "a number", number),
                        cv: try field(layer, "cv", "a number", number),
                        entropy: try field(layer, "entropy", "a number", number))
                    if layer["bias"] != nil {
                        record.bias = try field(layer, "bias", "an array of numbers") { v -> [Double]? in
                            guard let items = v.arrayValue else { return nil }
                            let values = items.compactMap(\.doubleValue)
                            return values.count == items.count ? values : nil
                        }
                    }
                    if layer["routing_disagreement"] != nil {
                        record.routingDisagreement = try field(layer, "routing_disagreement", "a number", number)
                    }
                    moe!.append(record)
                }
            }
            var record = TrainRecord(
                step: try field(value, "step", "an integer", integer),
                loss: try field(value, "loss", "a number", number),
                lr: try field(value, "lr", "a number", number),
                tokensPerSecond: try field(value, "tokens_per_s", "a number", number),
                elapsedSeconds: try field(value, "elapsed_s", "a number", number),
                moe: moe)
            if value["warnings"] != nil {
                record.warnings = try field(value, "warnings", "an array of strings") { v -> [String]? in
                    guard let items = v.arrayValue else { return nil }
                    let texts = items.compactMap(\.stringValue)
                    return texts.count == items.count ? texts : nil
                }
            }
            return .train(record)
        case "eval":
            return .eval(EvalRecord(
                step: try field(value, "step", "an integer", integer),
                valLoss: try field(value, "val_loss", "a number", number),
                elapsedSeconds: try field(value, "elapsed_s", "a number", number)))
        default:
            throw MetricsLineError(text: "unknown kind '\(kind)'; expected \"train\" or \"eval\"")
        }
    }
}
