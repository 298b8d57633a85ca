// Run configuration files: JSON, or the subset of TOML a run config needs. A `[section]` header is
// allowed and flattens the keys below it to `section.key` (as are nested JSON objects), so both formats
// produce the same flat map and one list of known keys validates either.

/// One configuration value.
public enum ConfigValue: Equatable, Sendable, CustomStringConvertible {
    case int(Int)
    case double(Double)
    case string(String)
    case bool(Bool)

    /// The value as it would be written in TOML: `3`, `0.1`, `"text"`, `true`.
    public var description: String {
        switch self {
        case .int(let i): return String(i)
        case .double(let d): return d.description
        case .string(let s):
            var out = ""
            writeJSONString(s, to: &out)
            return out
        case .bool(let b): return b ? "true" : "false"
        }
    }

    /// "an integer", "a number", "a string", "a boolean", for messages.
    var kindName: String {
        switch self {
        case .int: return "an integer"
        case .double: return "a number"
        case .string: return "a string"
        case .bool: return "a boolean"
        }
    }
}

/// A configuration file could not be read or holds something wrong; the message names the file, the
/// line, and what to write instead.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    /// The whole message, ready to print: one line (control characters escaped).
    public let description: String

    public init(description: String) { self.description = description.oneLine }
}

/// A parsed run configuration: a flat map of keys to values, with the line each key was set on.
///
/// Formats, chosen by the file's extension:
/// - `.toml`: `key = value` lines; values are `"strings"` (with `\"`, `\\`, `\n`, `\t`, `\uXXXX`
///   escapes), `'literal strings'`, integers (`1_000` allowed), floats (`3e-4`, `inf`, `nan`) and
///   `true`/`false`; `#` starts a comment; blank lines are ignored. A `[section]` line makes the keys
///   after it `section.key`; dotted keys `a.b = 1` are the same. Arrays, inline tables, multi-line
///   strings and dates are refused with a message.
/// - `.json`: one object; nested objects flatten to `outer.inner` keys; arrays and `null` are refused.
///
/// ```swift
/// let config = try ConfigFile.load(path: "run.toml")
/// try config.validateKeys(known: ["layers", "lr", "experts", "top_k"])
/// let layers = try config.int("layers") ?? 4
/// ```
public struct ConfigFile: Sendable {
    /// The file's path, as given; messages start with it.
    public let path: String
    /// The values by key (`section.key` for keys under a section).
    public var values: [String: ConfigValue]
    /// The 1-based line each key was set on.
    public var lines: [String: Int]

    public init(path: String, values: [String: ConfigValue], lines: [String: Int] = [:]) {
        self.path = path
        self.values = values
        self.lines = lines
    }

    /// The value for `key`, or nil if the file does not set it.
    public subscript(key: String) -> ConfigValue? { values[key] }

    /// Reads and parses the file at `path`; the extension (`.toml` or `.json`) picks the format.
    public static func load(path: String) throws -> ConfigFile {
        let bytes: [UInt8]
        do {
            bytes = try FileSystem.readFile(path)
        } catch let error as FileSystemError {
            throw ConfigError(description: "\(path): cannot read the config file (\(error.reason ?? error.description)); check the path")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigError(description: "\(path): the file is not valid UTF-8 text; save it as UTF-8")
        }
        return try parse(text, path: path)
    }

    /// Parses `text` as the format `path`'s extension names (`.toml` or `.json`).
    /// A UTF-8 byte-order mark (which some Windows editors write) is skipped.
    public static func parse(_ text: String, path: String) throws -> ConfigFile {
        if text.unicodeScalars.first == "\u{FEFF}" { return try parse(String(text.unicodeScalars.dropFirst()), path: path) }
        if path.hasSuffix(".toml") { return try parseTOML(text, path: path) }
        if path.hasSuffix(".json") { return try parseJSON(text, path: path) }
        let name = AtomicFile.splitPath(path).base
        let ext = name.contains(".") ? "'." + name.split(separator: ".").last! + "'" : "no extension"
        throw ConfigError(description: "\(path): config files must end in .toml or .json, this one has \(ext); "
            + "rename it to match its format")
    }

    /// Throws for any key not in `known`, naming its line and the closest known key:
    /// `run.toml: unknown key 'layer' (line 3); did you mean 'layers'? known keys: experts, layers, lr`.
    public func validateKeys(known: Set<String>) throws {
        let unknown = values.keys.filter { !known.contains($0) }.sorted {
            (lines[$0] ?? 0, $0) < (lines[$1] ?? 0, $1)
        }
        guard !unknown.isEmpty else { return }
        let knownList = "known keys: " + known.sorted().joined(separator: ", ")
        if unknown.count == 1 {
            let key = unknown[0]
            let at = lines[key].map { " (line \($0))" } ?? ""
            let hint = closestKey(to: key, in: known).map { "; did you mean '\($0)'?" } ?? ";"
            throw ConfigError(description: "\(path): unknown key '\(key)'\(at)\(hint) \(knownList)")
        }
        let described = unknown.map { key -> String in
            var notes: [String] = []
            if let line = lines[key] { notes.append("line \(line)") }
            if let suggestion = closestKey(to: key, in: known) { notes.append("did you mean '\(suggestion)'?") }
            return "'\(key)'" + (notes.isEmpty ? "" : " (" + notes.joined(separator: ", ") + ")")
        }
        throw ConfigError(description: "\(path): unknown keys \(described.joined(separator: ", ")); \(knownList)")
    }

    /// The integer at `key`, nil if unset; throws if it is set to something else.
    public func int(_ key: String) throws -> Int? {
        guard let value = values[key] else { return nil }
        if case .int(let i) = value { return i }
        throw typeError(key, value, expected: "an integer")
    }

    /// The number at `key` (integers accepted), nil if unset; throws if it is set to something else.
    public func double(_ key: String) throws -> Double? {
        guard let value = values[key] else { return nil }
        switch value {
        case .double(let d): return d
        case .int(let i): return Double(i)
        default: throw typeError(key, value, expected: "a number")
        }
    }

    /// The string at `key`, nil if unset; throws if it is set to something else.
    public func string(_ key: String) throws -> String? {
        guard let value = values[key] else { return nil }
        if case .string(let s) = value { return s }
        throw typeError(key, value, expected: "a string")
    }

    /// The boolean at `key`, nil if unset; throws if it is set to something else.
    public func bool(_ key: String) throws -> Bool? {
        guard let value = values[key] else { return nil }
        if case .bool(let b) = value { return b }
        throw typeError(key, value, expected: "true or false")
    }

    func typeError(_ key: String, _ value: ConfigValue, expected: String) -> ConfigError {
        let at = lines[key].map { " (line \($0))" } ?? ""
        return ConfigError(description: "\(path): '\(key)'\(at) must be \(expected), but it is \(value.kindName), "
            + "\(value); change the value")
    }
}

/// The key of `known` nearest to `key` by edit distance, if it is near enough to be a likely typo
/// (at most a third of the key's length, and at least 1).
func closestKey(to key: String, in known: Set<String>) -> String? {
    let limit = max(1, key.count / 3)
    var best: (key: String, distance: Int)?
    for candidate in known.sorted() {
        let d = editDistance(key, candidate)
        if d <= limit && d < (best?.distance ?? Int.max) { best = (candidate, d) }
    }
    return best?.key
}

/// Levenshtein distance over characters (insertions, deletions, substitutions each cost 1).
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in stride(from: 1, through: b.count, by: 1) {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}
