import Tensors

/// Runs every collective of a group and compares each rank's results with values computed directly
/// (loops over the peers' inputs, which every rank can generate): the one checker behind the thread
/// group tests, the `mpirun` tests (`fastmoe selftest collectives`) and a quick check of a new cluster.
///
/// Inputs are small integers, so sums are exact in every dtype whatever order a backend adds in;
/// averages are compared with a tolerance of the dtype. Mismatches are collected and thrown at the
/// end, not at the first one: a rank that stopped early would leave its peers waiting in the next
/// collective.
///
/// ```swift
/// try ThreadProcessGroup.run(worldSize: 3) { group in try CollectiveSelfCheck.run(group: group) }
/// ```
public enum CollectiveSelfCheck {
    /// The dtypes checked on `device`: float64 too on the CPU.
    public static func dtypes(on device: Device) -> [DType] {
        device == .cpu ? [.float32, .bfloat16, .int32, .float64] : [.float32, .bfloat16, .int32]
    }

    /// Checks every collective over `group` in `dtypes`. Every rank of the group must call it.
    /// - Returns: the number of comparisons made on this rank.
    /// - Throws: ``CollectiveCheckFailure`` listing every result that differed from the direct computation.
    @discardableResult
    public static func run(group: any ProcessGroup, dtypes: [DType]? = nil) throws -> Int {
        var check = Checker(group: group)
        for dtype in dtypes ?? Self.dtypes(on: group.device) {
            check.allReduce(dtype)
            check.broadcast(dtype)
            check.allGather(dtype)
            check.reduceScatter(dtype)
            check.allToAll(dtype)
        }
        group.barrier()
        check.split()
        if !check.failures.isEmpty {
            throw CollectiveCheckFailure(group: group.name, rank: group.rank, failures: check.failures)
        }
        return check.comparisons
    }
}

/// What `CollectiveSelfCheck.run` found wrong on one rank.
public struct CollectiveCheckFailure: Error, CustomStringConvertible {
    public let group: String
    public let rank: Int
    /// One line per wrong result: op, dtype, element, value and expected value.
    public let failures: [String]

    public var description: String {
        "collective self-check on group '\(group)', rank \(rank): \(failures.count) wrong result(s):\n"
            + failures.joined(separator: "\n")
    }
}

/// The checks themselves; `failures` collects what differed.
private struct Checker {
    let group: any ProcessGroup
    var failures: [String] = []
    var comparisons = 0
    var W: Int { group.size }
    var r: Int { group.rank }

    init(group: any ProcessGroup) { self.group = group }

    /// The input element `i` of rank `rank`: an integer in -8...8, different per rank, element and salt.
    static func value(_ rank: Int, _ i: Int, _ salt: Int) -> Double { Double((rank * 7 + i * 3 + salt * 5) % 17 - 8) }

    func tensor(_ values: [Double], _ shape: [Int], _ dtype: DType) -> Tensor {
        if dtype == .int32 { return Tensor(values.map { Int32($0) }, shape: shape, device: group.device) }
        return Tensor(values, shape: shape, dtype: dtype, device: group.device)
    }

    func inputs(_ rank: Int, count: Int, salt: Int) -> [Double] { (0..<count).map { Self.value(rank, $0, salt) } }

    /// The reduction of a list of values as a backend of `dtype` computes it.
    static func reduce(_ values: [Double], _ op: ReduceOperation, _ dtype: DType) -> Double {
        switch op {
        case .sum: return values.reduce(0, +)
        case .max: return values.max()!
        case .average:
            let sum = values.reduce(0, +)
            // int32: sum divided by W, toward zero, as MPI's sum-then-divide gives.
            return dtype == .int32 ? Double(Int(sum) / values.count) : sum / Double(values.count)
        }
    }

    mutating func compare(_ what: String, _ dtype: DType, _ got: Tensor, _ expected: [Double], shape: [Int]) {
        comparisons += 1
        guard got.shape == shape else {
            failures.append("\(what) \(dtype): shape \(got.shape), expected \(shape)")
            return
        }
        let values = got.doubles()
        let tolerance: Double = switch dtype {
        case .int32: 0
        case .float64: 1e-12
        case .float32: 1e-6
        case .bfloat16: 1.0 / 128
        }
        for (i, (v, e)) in zip(values, expected).enumerated() where abs(v - e) > tolerance * max(1, abs(e)) {
            failures.append("\(what) \(dtype): element \(i) is \(v), expected \(e)")
            return
        }
    }

    mutating func allReduce(_ dtype: DType) {
        for (salt, op) in ReduceOperation.allCases.enumerated() {
            for shape in [[3, 5], [0]] {
                let count = shape.reduce(1, *)
                let x = tensor(inputs(r, count: count, salt: salt), shape, dtype)
                group.allReduce(x, op)
                let expected = (0..<count).map { i in Self.reduce((0..<W).map { Self.value($0, i, salt) }, op, dtype) }
                compare("allReduce(\(op)) of \(shape)", dtype, x, expected, shape: shape)
            }
        }
        let y = tensor(inputs(r, count: 7, salt: 9), [7], dtype)
        let work = group.allReduceAsync(y, .sum)
        work.wait()
        compare("allReduceAsync(sum)", dtype, y, (0..<7).map { i in (0..<W).map { Self.value($0, i, 9) }.reduce(0, +) }, shape: [7])
    }

    mutating func broadcast(_ dtype: DType) {
        for root in Set([0, W - 1]).sorted() {
            let x = tensor(inputs(r, count: 6, salt: 3 + root), [2, 3], dtype)
            group.broadcast(x, root: root)
            compare("broadcast(root \(root))", dtype, x, inputs(root, count: 6, salt: 3 + root), shape: [2, 3])
        }
    }

    mutating func allGather(_ dtype: DType) {
        let x = tensor(inputs(r, count: 6, salt: 4), [2, 3], dtype)
        let out = group.allGather(x)
        compare("allGather", dtype, out, (0..<W).flatMap { inputs($0, count: 6, salt: 4) }, shape: [2 * W, 3])
    }

    mutating func reduceScatter(_ dtype: DType) {
        for op in ReduceOperation.allCases {
            let x = tensor(inputs(r, count: 2 * W * 3, salt: 6), [2 * W, 3], dtype)
            let out = group.reduceScatter(x, op)
            let expected = (0..<6).map { j in Self.reduce((0..<W).map { Self.value($0, r * 6 + j, 6) }, op, dtype) }
            compare("reduceScatter(\(op))", dtype, out, expected, shape: [2, 3])
        }
    }

    /// Row `j` that `source` sends to `destination`, element `c`.
    static func row(_ source: Int, _ destination: Int, _ j: Int, _ c: Int) -> Double {
        Double((source * 31 + destination * 7 + j * 3 + c) % 17 - 8)
    }

    mutating func allToAll(_ dtype: DType) {
        let width = 3
        let last = W - 1
        // Uneven counts with zeros; then one where rank 0 sends nothing and the last rank receives nothing.
        let patterns: [(String, (Int, Int) -> Int)] = [
            ("uneven", { s, d in (s + 2 * d) % 3 }),
            ("silent peers", { s, d in s == 0 || d == last ? 0 : 1 + (s + d) % 2 }),
        ]
        for (label, count) in patterns {
            let sendCounts = (0..<W).map { count(r, $0) }
            let receiveCounts = (0..<W).map { count($0, r) }
            var rows: [Double] = []
            for d in 0..<W { for j in 0..<sendCounts[d] { for c in 0..<width { rows.append(Self.row(r, d, j, c)) } } }
            let x = tensor(rows, [sendCounts.reduce(0, +), width], dtype)
            let out = group.allToAll(x, sendCounts: sendCounts, receiveCounts: receiveCounts)
            var expected: [Double] = []
            for s in 0..<W { for j in 0..<receiveCounts[s] { for c in 0..<width { expected.append(Self.row(s, r, j, c)) } } }
            compare("allToAll(\(label), send \(sendCounts), receive \(receiveCounts))", dtype, out, expected,
                    shape: [receiveCounts.reduce(0, +), width])
        }
    }

    /// Split by parity with keys that reverse the order, then reduce and gather within each half.
    mutating func split() {
        let sub = group.split(color: r % 2, key: -r)
        let members = (0..<W).filter { $0 % 2 == r % 2 }.sorted(by: >)
        comparisons += 1
        guard sub.size == members.count, sub.rank == members.firstIndex(of: r)! else {
            failures.append("split(color: \(r % 2), key: \(-r)): rank \(sub.rank) of \(sub.size), expected \(members.firstIndex(of: r)!) of \(members.count)")
            return
        }
        let x = tensor([Double(r), 1], [2], .float32)
        sub.allReduce(x, .sum)
        compare("allReduce(sum) in split group \(sub.name)", .float32, x, [Double(members.reduce(0, +)), Double(members.count)], shape: [2])
        let gathered = sub.allGather(tensor([Double(r)], [1], .int32))
        compare("allGather in split group \(sub.name)", .int32, gathered, members.map(Double.init), shape: [members.count])
        sub.barrier()
    }
}
