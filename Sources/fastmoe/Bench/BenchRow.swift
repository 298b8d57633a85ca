import FastMoE

/// One measurement: a name, the median time, and a rate with its unit (TFLOP/s, GB/s, tokens/s).
struct BenchRow {
    var name: String
    var milliseconds: Double
    var rate: Double
    var unit: String
    /// Rate over the ceiling of the same run, when there is one.
    var ofCeiling: Double?

    static func printTable(_ rows: [BenchRow], title: String) {
        print(title)
        let width = max(28, rows.map(\.name.count).max() ?? 0)
        print(pad("measurement", width) + pad("median ms", 12) + pad("rate", 14) + "of ceiling")
        for r in rows {
            let ceiling = r.ofCeiling.map { Format.fixed($0 * 100, 1) + "%" } ?? ""
            print(pad(r.name, width) + pad(Format.fixed(r.milliseconds, 3), 12) + pad(Format.fixed(r.rate, 2) + " " + r.unit, 14) + ceiling)
        }
        for r in rows {
            var fields = ["\"bench\":\"\(r.name)\"", "\"ms\":\(r.milliseconds)", "\"rate\":\(r.rate)", "\"unit\":\"\(r.unit)\""]
            if let c = r.ofCeiling { fields.append("\"of_ceiling\":\(c)") }
            print("{" + fields.joined(separator: ",") + "}")
        }
    }

    /// A table of fixed-width columns (`(header, width)`; width 0 = unpadded last column), then a footer line.
    static func printColumns(_ columns: [(header: String, width: Int)], rows: [[String]], title: String, footer: String) {
        print(title)
        print(columns.map { pad($0.header, $0.width) }.joined())
        for cells in rows { print(zip(cells, columns).map { pad($0.0, $0.1.width) }.joined()) }
        print(footer)
    }

    static func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
}

/// Median wall time of `body` in milliseconds, after one untimed warm-up; `sync` waits for the device.
func medianMilliseconds(repeats: Int, sync: () -> Void, _ body: () -> Void) -> Double {
    body()
    sync()
    let clock = ContinuousClock()
    var times: [Double] = []
    for _ in 0..<repeats {
        let t = clock.measure { body(); sync() }
        times.append(Double(t.components.seconds) * 1e3 + Double(t.components.attoseconds) * 1e-15)
    }
    return times.sorted()[times.count / 2]
}
