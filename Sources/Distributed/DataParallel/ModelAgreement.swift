import NN
import Tensors

/// The check that every rank built the same model before data-parallel training starts: the same
/// parameters, in the same order, with the same names, shapes, dtypes and groups. Otherwise the
/// ranks would average unrelated tensors, or wait forever in mismatched collectives.
///
/// Every rank contributes a 64-bit hash of its model's description (one all-gather); only when they
/// differ are the descriptions of rank 0 and of the first rank that differs sent around, so that
/// every rank can name the first difference.
/// ```swift
/// try ModelAgreement.check(model.namedParameters(), over: world)
/// ```
public enum ModelAgreement {
    /// - Throws: ``DistributedError`` on every rank when some rank's model differs from rank 0's,
    ///   naming both ranks and the first parameter that differs.
    public static func check(_ parameters: [(name: String, parameter: Parameter)], over group: any ProcessGroup) throws {
        let lines = parameters.map(describe)
        let text = Array(lines.joined(separator: "\n").utf8)
        let hash = fnv1a(text)
        let mine = Tensor([Int32(truncatingIfNeeded: hash), Int32(truncatingIfNeeded: hash >> 32)], shape: [2], device: group.device)
        let hashes = group.allGather(mine).int32s()
        let perRank = (0..<group.size).map { [hashes[2 * $0], hashes[2 * $0 + 1]] }
        guard let other = (1..<group.size).first(where: { perRank[$0] != perRank[0] }) else { return }
        let first = String(decoding: share(text, from: 0, over: group), as: UTF8.self)
        let second = String(decoding: share(text, from: other, over: group), as: UTF8.self)
        throw DistributedError("rank 0 and rank \(other) built different models: "
            + firstDifference(first.split(separator: "\n").map(String.init), second.split(separator: "\n").map(String.init), other: other)
            + "; every rank must run the same command with the same settings and files (check the flags, config files and "
            + "fastmoe version on every node)")
    }

    /// "blocks.0.mlp.fc1.weight [128, 32] float32 shared".
    static func describe(_ entry: (name: String, parameter: Parameter)) -> String {
        "\(entry.name) \(entry.parameter.shape) \(entry.parameter.value.dtype) \(entry.parameter.group.rawValue)"
    }

    /// The first line that differs, in words.
    static func firstDifference(_ a: [String], _ b: [String], other: Int) -> String {
        for (i, (x, y)) in zip(a, b).enumerated() where x != y {
            return "parameter \(i) is '\(x)' on rank 0 but '\(y)' on rank \(other)"
        }
        if a.count != b.count {
            let (longer, rank) = a.count > b.count ? (a, 0) : (b, other)
            return "rank 0 has \(a.count) parameters and rank \(other) has \(b.count); the first extra one, on rank \(rank), is '\(longer[min(a.count, b.count)])'"
        }
        return "their parameter lists hash differently but read the same"
    }

    /// `root`'s bytes on every rank: its length first, then the bytes as int32 values.
    static func share(_ bytes: [UInt8], from root: Int, over group: any ProcessGroup) -> [UInt8] {
        let length = Tensor([Int32(group.rank == root ? bytes.count : 0)], shape: [1], device: group.device)
        group.broadcast(length, root: root)
        let n = Int(length.int32s()[0])
        let values = group.rank == root ? bytes.map(Int32.init) : [Int32](repeating: 0, count: n)
        let payload = Tensor(values, shape: [n], device: group.device)
        if n > 0 { group.broadcast(payload, root: root) }
        return payload.int32s().map { UInt8(truncatingIfNeeded: $0) }
    }

    static func fnv1a(_ bytes: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return h
    }
}

extension GradientSync {
    /// Copies rank 0's parameter values to every rank (rank 0 of each parameter's replica group), so
    /// all replicas start equal whatever each rank initialized. Call after ``ModelAgreement/check(_:over:)``.
    public func broadcastParameters() {
        withoutGradient {
            for ((_, p), index) in zip(parameters, placementOfParameter) {
                placements[index].replicas.broadcast(p.value, root: 0)
            }
        }
    }
}
