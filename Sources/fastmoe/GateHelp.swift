import ArgumentParser
import FastMoE

extension GateSpec {
    /// `--gate`'s help, from the gate table.
    static var helpText: String {
        "The MoE gate (default topk): " + GateSpec.all.map { "\($0.name): \($0.summary)" }.joined(separator: "; ") + ". "
            + GateSpec.all.compactMap(\.note).map { $0.prefix(1).uppercased() + $0.dropFirst() + "." }.joined(separator: " ")
    }
}
