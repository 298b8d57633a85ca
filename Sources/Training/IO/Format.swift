#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Number formatting for people (console lines, messages, reports), without Foundation: one home
// for every fixed-point, compact, scientific and duration rendering the package prints.

extension String {
    /// The text with its control characters written as escapes (`\n`, `\r`, `\u{1B}`; a tab
    /// stays), so that a message quoting a name or value read from a damaged file is still one
    /// line, and cannot move the terminal's cursor. Issue 13's fuzz test found messages broken
    /// over lines by a `\n` in a JSON key and a stray carriage return in a TOML line.
    ///
    /// ```swift
    /// "unknown key 'a\nb'".oneLine  // "unknown key 'a\\nb'"
    /// ```
    public var oneLine: String {
        guard unicodeScalars.contains(where: { ($0.value < 0x20 && $0 != "\t") || $0.value == 0x7F || $0 == "\u{2028}" || $0 == "\u{2029}" })
        else { return self }
        var out = ""
        for scalar in unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out.unicodeScalars.append(scalar)
            case _ where scalar.value < 0x20 || scalar.value == 0x7F || scalar == "\u{2028}" || scalar == "\u{2029}":
                out += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}

/// How numbers are written for people: `Format.fixed(1.23456, 3)` = "1.235".
///
/// ```swift
/// Format.fixed(1.23456, 3)      // "1.235"
/// Format.compact(15_234)        // "15.2k"
/// Format.duration(3725)         // "1:02:05"
/// Format.count(1_204)           // "1,204"
/// ```
public enum Format {
    /// `x` with exactly `digits` decimals: `fixed(1.23456, 3)` = "1.235"; "nan", "inf", "-inf" for
    /// non-finite values.
    public static func fixed(_ x: Double, _ digits: Int) -> String {
        guard x.isFinite else { return x.isNaN ? "nan" : (x > 0 ? "inf" : "-inf") }
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let v = (Swift.abs(x) * scale).rounded()
        let whole = v / scale
        let wholeText = whole < 1e18 ? String(Int(whole.rounded(.down))) : String(whole)
        var frac = String(Int(v - whole.rounded(.down) * scale))
        while frac.count < digits { frac = "0" + frac }
        return (x < 0 && v > 0 ? "-" : "") + wholeText + (digits > 0 ? "." + frac : "")
    }

    /// `x` with at most `decimals` digits after the point, trailing zeros removed: 2.50 → "2.5".
    /// For SVG attributes and chart labels, where "2.50" is noise.
    public static func decimal(_ x: Double, decimals: Int) -> String {
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (Swift.abs(x) * scale).rounded()
        guard scaled < 9e15 else { return x.isFinite ? String(Int(x.rounded())) : fixed(x, 0) }
        var digits = String(Int(scaled))
        if decimals > 0 {
            if digits.count <= decimals { digits = String(repeating: "0", count: decimals - digits.count + 1) + digits }
            let point = digits.index(digits.endIndex, offsetBy: -decimals)
            var fraction = String(digits[point...])
            while fraction.hasSuffix("0") { fraction.removeLast() }
            digits = String(digits[..<point]) + (fraction.isEmpty ? "" : "." + fraction)
        }
        return (x < 0 && scaled > 0 ? "-" : "") + digits
    }

    /// `x` as `1.6e-03` (one decimal of mantissa, two exponent digits).
    public static func scientific(_ x: Double) -> String {
        guard x.isFinite, x != 0 else { return x == 0 ? "0" : fixed(x, 0) }
        var exponent = 0
        var m = Swift.abs(x)
        while m >= 10 { m /= 10; exponent += 1 }
        while m < 1 { m *= 10; exponent -= 1 }
        if fixed(m, 1) == "10.0" { m /= 10; exponent += 1 }
        let e = Swift.abs(exponent) < 10 ? "0\(Swift.abs(exponent))" : "\(Swift.abs(exponent))"
        return (x < 0 ? "-" : "") + fixed(m, 1) + "e" + (exponent < 0 ? "-" : "+") + e
    }

    /// `15234` → "15.2k", `2.1e9` → "2.10G".
    public static func compact(_ x: Double) -> String {
        let a = Swift.abs(x)
        if a >= 1e12 { return fixed(x / 1e12, 2) + "T" }
        if a >= 1e9 { return fixed(x / 1e9, 2) + "G" }
        if a >= 1e6 { return fixed(x / 1e6, 2) + "M" }
        if a >= 1e3 { return fixed(x / 1e3, 1) + "k" }
        return fixed(x, 0)
    }

    /// Seconds as `m:ss` or `h:mm:ss`; "--:--" when unknown.
    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0, seconds < 1e15 else { return "--:--" }
        let s = Int(seconds.rounded())
        let (h, m, sec) = (s / 3600, (s / 60) % 60, s % 60)
        let ss = sec < 10 ? "0\(sec)" : "\(sec)"
        if h > 0 { return "\(h):\(m < 10 ? "0\(m)" : "\(m)"):\(ss)" }
        return "\(m):\(ss)"
    }

    /// `1204` → "1,204": counts in messages are easier to compare with separators.
    public static func count(_ value: Int) -> String {
        let digits = String(value.magnitude)
        var out = ""
        for (i, ch) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
            out.append(ch)
        }
        return value < 0 ? "-" + out : out
    }

    /// Bytes in binary units: `1536` → "1.5 KiB", `12_000_000_000` → "11.2 GiB".
    public static func bytes(_ value: Double) -> String {
        let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var v = value, unit = 0
        while Swift.abs(v) >= 1024 && unit < units.count - 1 { v /= 1024; unit += 1 }
        return unit == 0 ? fixed(v, 0) + " bytes" : fixed(v, 1) + " " + units[unit]
    }
}

// Chart and table labels (the report).
extension Format {
    /// A number for a tick label or a table: few digits, thousands as `12k`, tiny or huge in `3e-4` form.
    static func label(_ value: Double, significant: Int = 3) -> String {
        guard value.isFinite else { return value.isNaN ? "NaN" : (value > 0 ? "∞" : "-∞") }
        if value == 0 { return "0" }
        let magnitude = abs(value)
        if magnitude >= 1e6 && magnitude < 1e9 { return label(value / 1e6, significant: significant) + "M" }
        if magnitude >= 1e4 && magnitude < 1e6 { return label(value / 1e3, significant: significant) + "k" }
        if magnitude >= 1e9 || magnitude < 1e-3 {
            var exponent = Int(log10(magnitude).rounded(.down))
            var mantissa = value / pow(10, Double(exponent))
            if abs(roundTo(mantissa, decimals: significant - 1)) >= 10 {  // 9.996e-5 rounds to 10e-5
                exponent += 1
                mantissa /= 10
            }
            return Format.decimal(mantissa, decimals: significant - 1) + "e" + String(exponent)
        }
        let digitsBeforePoint = Int(log10(magnitude).rounded(.down)) + 1  // 0 or negative below 1: 0.0123 → -1
        return Format.decimal(value, decimals: max(0, significant - digitsBeforePoint))
    }

    static func roundTo(_ value: Double, decimals: Int) -> Double {
        let scale = pow(10, Double(decimals))
        return (value * scale).rounded() / scale
    }

    /// A duration for tables: `42 s`, `3 min 5 s`, `2 h 14 min`.
    static func spokenDuration(_ seconds: Double) -> String {
        guard seconds.isFinite && seconds >= 0 else { return "–" }
        if seconds < 60 { return label(seconds) + " s" }
        // Beyond Int's range only a damaged metrics file goes; it still gets a number, in hours.
        if seconds >= 1e15 { return label(seconds / 3600) + " h" }
        let total = Int(seconds.rounded())
        if total < 3600 { return "\(total / 60) min \(total % 60) s" }
        return "\(total / 3600) h \((total % 3600) / 60) min"
    }
}
