import Tensors

/// The check the MPI group makes before each collective: every rank all-gathers a short record of
/// what it is about to do, and every rank compares the records. MPI itself would hang on a missing
/// rank, or truncate, or read the wrong bytes; here every rank stops with the same message instead.
/// One all-gather of `10 + W` integers per collective: small next to any tensor worth sending.
extension MPIProcessGroup {
    enum Collective: Int64, CaseIterable {
        case allReduce = 1, broadcast, allGather, reduceScatter, allToAll, barrier, split

        var name: String { "\(self)" }
        /// Whether every rank must pass the same shape (all-to-all only needs the same width).
        var sameShape: Bool { self != .allToAll && self != .barrier && self != .split }
    }

    private static let headerLength = 10

    /// Compares this rank's call with every peer's; stops naming the op and ranks on a mismatch.
    /// - Returns: every rank's send counts (all-to-all), `[peer][destination]`.
    @discardableResult
    func agree(_ op: Collective, _ tensor: Tensor?, reduce: ReduceOperation? = nil, root: Int = -1,
               sendCounts: [Int] = []) -> [[Int]] {
        let shape = tensor?.shape ?? []
        var record = [Int64](repeating: -1, count: Self.headerLength + size)
        record[0] = op.rawValue
        record[1] = tensor.map { Int64(DType.allCases.firstIndex(of: $0.dtype)!) } ?? -1
        record[2] = reduce.map { Int64(ReduceOperation.allCases.firstIndex(of: $0)!) } ?? -1
        record[3] = Int64(root)
        record[4] = Int64(tensor?.count ?? 0)
        record[5] = Int64(shape.count)
        for (i, d) in shape.prefix(4).enumerated() { record[6 + i] = Int64(d) }
        for (i, c) in sendCounts.enumerated() { record[Self.headerLength + i] = Int64(c) }

        var all = [Int64](repeating: 0, count: record.count * size)
        mpi.check(mpi.allgather(record, Int32(record.count), mpi.int64, &all, Int32(record.count), mpi.int64, communicator),
                  "MPI_Allgather (collective check)", group: name)
        let records = (0..<size).map { Array(all[($0 * record.count)..<(($0 + 1) * record.count)]) }

        for (peer, other) in records.enumerated() {
            guard other[0] == record[0] else {
                let theirs = Collective(rawValue: other[0])?.name ?? "an unknown operation (\(other[0]))"
                guarantee(false, "MPI group '\(name)': rank \(rank) called \(op.name) but rank \(peer) called \(theirs); every rank must call the same collectives in the same order")
                continue
            }
            let sameData = other[1] == record[1] && (op.sameShape ? other[4...9] == record[4...9] : other[7] == record[7])
            guarantee(sameData, "\(op.name) on MPI group '\(name)': rank \(rank) passes \(Self.describe(record)) but rank \(peer) passes \(Self.describe(other)); every rank must pass the same \(op.sameShape ? "shape" : "row width") and dtype")
            guarantee(other[2] == record[2], "\(op.name) on MPI group '\(name)': rank \(rank) reduces with \(Self.reduction(record[2])) but rank \(peer) with \(Self.reduction(other[2]))")
            guarantee(other[3] == record[3], "\(op.name) on MPI group '\(name)': rank \(rank) names root \(record[3]) but rank \(peer) names root \(other[3])")
        }
        return op == .allToAll ? records.map { $0[Self.headerLength...].map { Int($0) } } : []
    }

    /// "float32 [2, 3]" from a record.
    private static func describe(_ record: [Int64]) -> String {
        guard record[1] >= 0 else { return "no tensor" }
        let rank = Int(record[5])
        let dims = record[6..<(6 + min(rank, 4))].map(String.init) + (rank > 4 ? ["…"] : [])
        return "\(DType.allCases[Int(record[1])]) [\(dims.joined(separator: ", "))]"
    }

    private static func reduction(_ code: Int64) -> String {
        code >= 0 ? ReduceOperation.allCases[Int(code)].rawValue : "-"
    }
}
