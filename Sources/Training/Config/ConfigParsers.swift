// The two config syntaxes, both producing ConfigFile's flat key → value map with line numbers.

extension ConfigFile {
    /// Parses the TOML subset described at ``ConfigFile``. Errors read
    /// `run.toml, line 3: expected '=' after 'layers'; write settings as key = value`.
    public static func parseTOML(_ text: String, path: String) throws -> ConfigFile {
        var config = ConfigFile(path: path, values: [:])
        var section = ""
        // Split the bytes, not the Characters: "\r\n" is one Character and would not split on "\n".
        for (index, rawLine) in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            let lineNumber = index + 1
            var line = TOMLLine(text: Array(rawLine), path: path, number: lineNumber)
            line.skipSpaces()
            guard let first = line.current, first != UInt8(ascii: "#") else { continue }
            if first == UInt8(ascii: "[") {
                section = try line.parseSectionHeader()
                continue
            }
            let key = section.isEmpty ? try line.parseKey() : section + "." + (try line.parseKey())
            line.skipSpaces()
            guard line.current == UInt8(ascii: "=") else {
                throw line.error("expected '=' after '\(key)'; write settings as key = value")
            }
            line.index += 1
            line.skipSpaces()
            let value = try line.parseValue(key: key)
            try line.expectEnd()
            if let earlier = config.lines[key] {
                throw ConfigError(description: "\(path), line \(lineNumber): '\(key)' is already set on line "
                    + "\(earlier); keep one of the two")
            }
            config.values[key] = value
            config.lines[key] = lineNumber
        }
        return config
    }

    /// Parses a JSON object; nested objects flatten to `outer.inner`. Errors name the line.
    public static func parseJSON(_ text: String, path: String) throws -> ConfigFile {
        let root: JSONValue
        do {
            root = try JSONValue.parse(text)
        } catch {
            throw ConfigError(description: "\(path), \(error.description); fix the JSON syntax there")
        }
        guard let members = root.members else {
            throw ConfigError(description: "\(path): the file holds \(root.kindName), but a config is one JSON "
                + "object such as {\"layers\": 4}")
        }
        var config = ConfigFile(path: path, values: [:])
        func add(_ members: [JSONMember], prefix: String) throws {
            for member in members {
                let key = prefix + member.key
                let at = "\(path), line \(member.line)"
                let value: ConfigValue
                switch member.value {
                case .object(let inner):
                    try add(inner, prefix: key + ".")
                    continue
                case .int(let i): value = .int(i)
                case .double(let d): value = .double(d)
                case .string(let s): value = .string(s)
                case .bool(let b): value = .bool(b)
                case .array:
                    throw ConfigError(description: "\(at): '\(key)' is an array; config values are single "
                        + "numbers, strings or booleans")
                case .null:
                    throw ConfigError(description: "\(at): '\(key)' is null; give a value or leave the key out")
                }
                if let earlier = config.lines[key] {
                    throw ConfigError(description: "\(at): '\(key)' is already set on line \(earlier); keep one of the two")
                }
                config.values[key] = value
                config.lines[key] = member.line
            }
        }
        try add(members, prefix: "")
        return config
    }
}

/// A cursor over one line of TOML.
struct TOMLLine {
    let text: [UInt8]
    let path: String
    let number: Int
    var index = 0

    init(text: [UInt8], path: String, number: Int) {
        // A file saved on Windows ends lines in \r\n; the \r is not part of the value.
        self.text = text.last == UInt8(ascii: "\r") ? Array(text.dropLast()) : text
        self.path = path
        self.number = number
    }

    var current: UInt8? { index < text.count ? text[index] : nil }

    func error(_ reason: String) -> ConfigError {
        ConfigError(description: "\(path), line \(number): \(reason)")
    }

    mutating func skipSpaces() {
        while let c = current, c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") { index += 1 }
    }

    /// After a value: only spaces and an optional comment may follow.
    mutating func expectEnd() throws {
        skipSpaces()
        if let c = current, c != UInt8(ascii: "#") {
            throw error("unexpected '\(String(decoding: text[index...], as: UTF8.self))' after the value; "
                + "put one setting per line, comments after '#'")
        }
    }

    static func isBareKeyByte(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
            || isDigit(c) || c == UInt8(ascii: "_") || c == UInt8(ascii: "-")
    }

    /// A bare key, possibly dotted (`optimizer.lr`), returned with the dots.
    mutating func parseKey() throws -> String {
        var parts: [String] = []
        while true {
            skipSpaces()
            if current == UInt8(ascii: "\"") || current == UInt8(ascii: "'") {
                throw error("quoted keys are not supported; use letters, digits, '_' and '-' in key names")
            }
            let start = index
            while let c = current, TOMLLine.isBareKeyByte(c) { index += 1 }
            if index == start {
                let found = current.map { "'\(printable($0))'" } ?? "the end of the line"
                throw error("expected a key name (letters, digits, '_', '-') but found \(found)")
            }
            parts.append(String(decoding: text[start..<index], as: UTF8.self))
            skipSpaces()
            guard current == UInt8(ascii: ".") else { return parts.joined(separator: ".") }
            index += 1
        }
    }

    /// `[name]` or `[a.b]`; returns the section prefix.
    mutating func parseSectionHeader() throws -> String {
        index += 1  // [
        if current == UInt8(ascii: "[") {
            throw error("arrays of tables ([[...]]) are not supported; use a [section] with distinct keys")
        }
        let name = try parseKey()
        skipSpaces()
        guard current == UInt8(ascii: "]") else { throw error("expected ']' to close the section name '\(name)'") }
        index += 1
        try expectEnd()
        return name
    }

    mutating func parseValue(key: String) throws -> ConfigValue {
        guard let c = current else { throw error("'\(key)' has no value after '='; write e.g. \(key) = 4") }
        switch c {
        case UInt8(ascii: "\""): return .string(try parseBasicString())
        case UInt8(ascii: "'"): return .string(try parseLiteralString())
        case UInt8(ascii: "["):
            throw error("'\(key)' is an array; arrays are not supported in run configs — give a single value")
        case UInt8(ascii: "{"):
            throw error("'\(key)' is an inline table; use a [section] instead")
        default: break
        }
        let start = index
        while let c = current, c != UInt8(ascii: " "), c != UInt8(ascii: "\t"), c != UInt8(ascii: "#") { index += 1 }
        let word = String(decoding: text[start..<index], as: UTF8.self)
        if word == "true" { return .bool(true) }
        if word == "false" { return .bool(false) }
        if let number = TOMLLine.number(word) { return number }
        if TOMLLine.isIntegerLiteral(word) {
            throw error("'\(word)' is too large for an integer: settings accept integers from "
                + "-9,223,372,036,854,775,808 to 9,223,372,036,854,775,807 (and the setting's own range)")
        }
        throw error("'\(word)' is not a value this config understands; write a number, true/false, or a quoted "
            + "string such as \"\(word)\"")
    }

    /// Whether `word` is written as an integer (sign, digits, underscores), whatever its size.
    static func isIntegerLiteral(_ word: String) -> Bool {
        var body = Substring(word)
        if body.first == "+" || body.first == "-" { body = body.dropFirst() }
        // Underscores only between digits, as TOML requires (so `1__0` stays "not a value").
        let chars = Array(body)
        return chars.first?.isNumber == true && chars.last?.isNumber == true
            && chars.allSatisfy { ($0.isASCII && $0.isNumber) || $0 == "_" }
            && !zip(chars, chars.dropFirst()).contains { $0 == "_" && $1 == "_" }
    }

    /// TOML integers (`42`, `-7`, `1_000`) and floats (`0.5`, `3e-4`, `inf`, `nan`); nil for anything else.
    static func number(_ word: String) -> ConfigValue? {
        var body = Substring(word)
        var sign = ""
        if let first = body.first, first == "+" || first == "-" {
            sign = first == "-" ? "-" : ""
            body = body.dropFirst()
        }
        switch body {
        case "inf": return .double(sign == "-" ? -.infinity : .infinity)
        case "nan": return .double(.nan)
        default: break
        }
        guard let first = body.first, first.isASCII, first.isNumber else { return nil }
        // Underscores must sit between digits, as TOML requires.
        let chars = Array(body)
        for (i, ch) in chars.enumerated() where ch == "_" {
            guard i > 0, i + 1 < chars.count, chars[i - 1].isNumber, chars[i + 1].isNumber else { return nil }
        }
        let digits = sign + String(body.filter { $0 != "_" })
        if digits.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == "-") }) {
            return Int(digits).map(ConfigValue.int)
        }
        guard digits.allSatisfy({ $0.isASCII && ($0.isNumber || "-+.eE".contains($0)) }) else { return nil }
        return Double(digits).map(ConfigValue.double)
    }

    mutating func parseLiteralString() throws -> String {
        index += 1
        let start = index
        while let c = current, c != UInt8(ascii: "'") { index += 1 }
        guard current != nil else { throw error("the string is not closed with ' on this line") }
        let value = String(decoding: text[start..<index], as: UTF8.self)
        index += 1
        if value.isEmpty && current == UInt8(ascii: "'") {
            throw error("multi-line strings (''') are not supported; write the value on one line")
        }
        return value
    }

    mutating func parseBasicString() throws -> String {
        index += 1
        if current == UInt8(ascii: "\""), index + 1 < text.count, text[index + 1] == UInt8(ascii: "\"") {
            throw error("multi-line strings (\"\"\") are not supported; write the value on one line")
        }
        var bytes: [UInt8] = []
        while true {
            guard let c = current else { throw error("the string is not closed with \" on this line") }
            index += 1
            if c == UInt8(ascii: "\"") { break }
            if c != UInt8(ascii: "\\") {
                bytes.append(c)
                continue
            }
            guard let e = current else { throw error("the string ends with a lone '\\'") }
            index += 1
            switch e {
            case UInt8(ascii: "\""): bytes.append(UInt8(ascii: "\""))
            case UInt8(ascii: "\\"): bytes.append(UInt8(ascii: "\\"))
            case UInt8(ascii: "n"): bytes.append(UInt8(ascii: "\n"))
            case UInt8(ascii: "t"): bytes.append(UInt8(ascii: "\t"))
            case UInt8(ascii: "r"): bytes.append(UInt8(ascii: "\r"))
            case UInt8(ascii: "b"): bytes.append(0x08)
            case UInt8(ascii: "f"): bytes.append(0x0C)
            case UInt8(ascii: "u"), UInt8(ascii: "U"):
                let width = e == UInt8(ascii: "u") ? 4 : 8
                var code: UInt32 = 0
                for _ in 0..<width {
                    guard let h = current, let digit = hexDigit(h) else {
                        throw error("expected \(width) hex digits after \\\(printable(e))")
                    }
                    code = code << 4 | digit
                    index += 1
                }
                guard let scalar = Unicode.Scalar(code) else {
                    throw error("\\\(printable(e)) escape \(String(code, radix: 16)) is not a Unicode scalar")
                }
                bytes.append(contentsOf: String(Character(scalar)).utf8)
            default:
                throw error("unknown escape '\\\(printable(e))'; write a backslash as \\\\")
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
