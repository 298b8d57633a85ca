// A resumed run continues from its checkpoint's step; metrics the stopped process logged after that
// step describe steps that will be trained again, and would appear twice in the report.

extension MetricsLog {
    /// Drops the records of steps after `step` from `DIR/metrics.jsonl` and `DIR/metrics.csv`, and
    /// a last line cut short by a killed writer; each file is replaced atomically. Lines that do not
    /// parse elsewhere are kept for ``read(path:)`` to report. Returns how many JSON records went.
    @discardableResult
    public static func dropRecords(after step: Int, in directory: String) throws -> Int {
        var dropped = 0
        let jsonl = directory + "/metrics.jsonl"
        if FileSystem.exists(jsonl) {
            dropped = try rewriteLines(jsonl) { line, isUnterminatedLast in
                guard let record = try? parseLine(line[...]) else { return !isUnterminatedLast }
                return record.step <= step
            }
        }
        let csv = directory + "/metrics.csv"
        if FileSystem.exists(csv) {
            try rewriteLines(csv) { line, isUnterminatedLast in
                // kind,step,…: the header and anything without a numeric step stay.
                let cells = line.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
                guard cells.count == csvColumns.count else { return !isUnterminatedLast }
                guard let s = Int(String(decoding: cells[1], as: UTF8.self)) else { return true }
                return s <= step
            }
        }
        return dropped
    }

    /// Keeps the lines `keep` accepts; returns how many non-empty lines went. Rewrites only on a change.
    @discardableResult
    static func rewriteLines(_ path: String, keep: ([UInt8], Bool) -> Bool) throws -> Int {
        let bytes = try FileSystem.readFile(path)
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map(Array.init)
        let terminated = lines.last?.isEmpty ?? true
        if terminated && !lines.isEmpty { lines.removeLast() }
        var kept: [[UInt8]] = []
        var removed = 0
        for (i, line) in lines.enumerated() {
            if line.isEmpty || keep(line, !terminated && i == lines.count - 1) { kept.append(line) } else { removed += 1 }
        }
        if removed > 0 || !terminated {
            try AtomicFile.write(bytes: kept.flatMap { $0 + [UInt8(ascii: "\n")] }, to: path)
        }
        return removed
    }
}
