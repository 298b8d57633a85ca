// Axis scales, tick choice and number formatting for the report's charts. Plain arithmetic, no
// Foundation: String(format:) is not available, so numbers are formatted here.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A mapping from data values to a pixel interval, linear or logarithmic, with its ticks.
struct ChartAxis {
    var lower: Double
    var upper: Double
    var logarithmic: Bool
    var ticks: [Double]

    /// An axis covering `values`: for linear axes, widened to "nice" tick multiples (and to 0 when
    /// `includeZero`); for log axes, to the data's range with ticks at 1-2-5-style mantissas.
    /// Non-finite values, values beyond ±10³⁰ (and, on a log axis, values below 10⁻³⁰) are ignored:
    /// no run logs them, and a damaged metrics.jsonl holding 1e308 would otherwise overflow the
    /// axis arithmetic (issue 13's fuzz test). Nil when nothing remains.
    init?(values: [Double], logarithmic: Bool, includeZero: Bool = false, targetTicks: Int = 6) {
        let usable = values.filter { $0.isFinite && Swift.abs($0) <= 1e30 && (!logarithmic || $0 >= 1e-30) }
        guard var low = usable.min(), var high = usable.max() else { return nil }
        self.logarithmic = logarithmic
        if logarithmic {
            if high / low < 1.02 {  // a flat series: open a small window around it
                low /= 1.05
                high *= 1.05
            }
            // A little headroom in log space so the extreme points do not sit on the frame.
            let pad = (log10(high) - log10(low)) * 0.04
            low = pow(10, log10(low) - pad)
            high = pow(10, log10(high) + pad)
            let grid = ChartAxis.logTicks(low, high, target: targetTicks)
            var ticks = grid.ticks
            // Reach out to the next grid value beyond each end when it is close, so both ends are labelled.
            let span = log(high) - log(low)
            if let below = grid.grid.last(where: { $0 < low }), log(low) - log(below) < 0.2 * span {
                low = below
                ticks.insert(below, at: 0)
            }
            if let above = grid.grid.first(where: { $0 > high }), log(above) - log(high) < 0.2 * span {
                high = above
                ticks.append(above)
            }
            self.lower = low
            self.upper = high
            self.ticks = ticks
        } else {
            if includeZero {
                low = min(low, 0)
                high = max(high, 0)
            }
            if high - low < 1e-12 * max(abs(high), 1) {  // flat: give it a unit-sized window
                let half = max(abs(high) * 0.05, 1e-12)
                low -= half
                high += half
            }
            let step = ChartAxis.niceStep((high - low) / Double(targetTicks - 1))
            low = (low / step).rounded(.down) * step
            high = (high / step).rounded(.up) * step
            self.lower = low
            self.upper = high
            let count = min(Int(((high - low) / step).rounded()), 4 * targetTicks) + 1
            self.ticks = (0..<count).map { low + Double($0) * step }
        }
    }

    /// The position of `value` in `0...1` along the axis (may fall outside for values out of range).
    func fraction(_ value: Double) -> Double {
        if logarithmic {
            return (log(value) - log(lower)) / (log(upper) - log(lower))
        }
        return (value - lower) / (upper - lower)
    }

    /// 1, 2 or 5 times a power of ten, the smallest not below `rough`.
    static func niceStep(_ rough: Double) -> Double {
        guard rough > 0 && rough.isFinite else { return 1 }
        let magnitude = pow(10, (log10(rough)).rounded(.down))
        for m in [1.0, 2.0, 5.0, 10.0] where m * magnitude >= rough * (1 - 1e-9) {
            return m * magnitude
        }
        return 10 * magnitude
    }

    /// Ticks for a log axis over `[low, high]`: mantissa sets from sparse to dense, the first giving at
    /// least 4 ticks; a range too narrow for that gets evenly spaced nice ticks. `grid` is the same
    /// pattern continued a step beyond both ends, for extending the axis to a labelled value.
    static func logTicks(_ low: Double, _ high: Double, target: Int) -> (ticks: [Double], grid: [Double]) {
        let mantissaSets: [[Double]] = [[1], [1, 3], [1, 2, 5], [1, 2, 3, 5], [1, 1.5, 2, 3, 4, 5, 7],
                                        [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9]]
        let firstDecade = Int(log10(low).rounded(.down)), lastDecade = Int(log10(high).rounded(.up))
        var fallback: [Double] = []
        for mantissas in mantissaSets {
            var grid: [Double] = []
            for decade in (firstDecade - 1)...(lastDecade + 1) {
                for m in mantissas { grid.append(m * pow(10, Double(decade))) }
            }
            let ticks = grid.filter { $0 >= low && $0 <= high }
            if ticks.count >= 4 { return (ticks, grid) }
            fallback = ticks
        }
        // Less than a fraction of a decade: evenly spaced nice values read better than sparse mantissas.
        let step = niceStep((high - low) / Double(target - 1))
        var ticks: [Double] = []
        var v = (low / step).rounded(.up) * step
        while v <= high * (1 + 1e-12) {
            ticks.append(v)
            v += step
        }
        guard ticks.count >= 2 else { return (fallback, fallback) }
        return (ticks, [ticks[0] - step] + ticks + [ticks[ticks.count - 1] + step])
    }
}

/// Text made safe to put in HTML or SVG content and attribute values.
func escapeHTML(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count)
    for ch in text.unicodeScalars {
        switch ch {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.unicodeScalars.append(ch)
        }
    }
    return out
}

/// A coordinate for SVG attributes: one decimal is finer than a pixel and keeps files small.
func svgNumber(_ value: Double) -> String {
    Format.decimal(value, decimals: 1)
}
