/// Slurm's compressed host lists (`SLURM_JOB_NODELIST`): `node[01-04,07],gpu-a,rack2-[1-2]-ib`.
///
/// One bracket per host expression, with a prefix and a suffix around it; ranges keep their
/// zero padding (`[08-10]` → `08 09 10`).
///
/// ```swift
/// try SlurmNodeList.expand("node[01-03,07]")   // ["node01", "node02", "node03", "node07"]
/// ```
public enum SlurmNodeList {
    /// Every host of the list, in order.
    /// - Throws: ``DistributedError`` for an unbalanced bracket, a bad range or an empty list.
    public static func expand(_ list: String) throws -> [String] {
        var hosts: [String] = []
        for expression in try topLevelParts(list) {
            guard let open = expression.firstIndex(of: "[") else {
                hosts.append(expression)
                continue
            }
            guard let close = expression[open...].firstIndex(of: "]") else {
                throw malformed(list, "'[' without ']'")
            }
            let prefix = expression[..<open]
            let suffix = expression[expression.index(after: close)...]
            guard !suffix.contains("[") else { throw malformed(list, "more than one bracket in \"\(expression)\"") }
            for item in expression[expression.index(after: open)..<close].split(separator: ",", omittingEmptySubsequences: false) {
                let bounds = item.split(separator: "-", omittingEmptySubsequences: false)
                guard (1...2).contains(bounds.count), bounds.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isNumber) }),
                      let low = Int(bounds[0]), let high = Int(bounds.last!), low <= high else {
                    throw malformed(list, "\"\(item)\" is not a number or a range low-high")
                }
                let width = bounds[0].count
                for n in low...high {
                    let digits = String(n)
                    hosts.append(prefix + String(repeating: "0", count: max(0, width - digits.count)) + digits + suffix)
                }
            }
        }
        guard !hosts.isEmpty else { throw malformed(list, "no hosts") }
        return hosts
    }

    /// Splits at the commas outside brackets.
    private static func topLevelParts(_ list: String) throws -> [String] {
        var parts: [String] = []
        var current = ""
        var depth = 0
        for character in list {
            switch character {
            case "[": depth += 1
            case "]":
                depth -= 1
                if depth < 0 { throw malformed(list, "']' without '['") }
            case "," where depth == 0:
                if !current.isEmpty { parts.append(current) }
                current = ""
                continue
            default: break
            }
            current.append(character)
        }
        if depth != 0 { throw malformed(list, "'[' without ']'") }
        if !current.isEmpty { parts.append(current) }
        return parts
    }

    private static func malformed(_ list: String, _ reason: String) -> DistributedError {
        DistributedError("SLURM_JOB_NODELIST=\"\(list)\" cannot be read: \(reason); set MASTER_ADDR to the host of rank 0 instead")
    }
}
