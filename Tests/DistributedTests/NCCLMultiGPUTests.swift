import CUDA
@testable import Distributed
import Tensors
import Testing

/// One NCCL rank per visible GPU (W ≥ 2), each on its own thread with a shared unique id: every collective
/// in every dtype against the host computation, an uneven all-to-all in which rank 0 sends nothing, and
/// a split. The ranks return what they read back; the checks run on the test's thread.
@Suite("NCCL process group, one rank per GPU", .serialized, .enabled(if: Device.cudaDeviceCount >= 2))
struct NCCLMultiGPUTests {
    let worldSize = Device.cudaDeviceCount

    /// The value rank `r` contributes at index `i` for tensor `seed`.
    func contribution(rank: Int, seed: Int, count: Int) -> [Double] { exactValues(count, seed: seed + 31 * rank) }

    func ranks<T>(_ body: @escaping @Sendable (NCCLProcessGroup) -> T) throws -> [T] {
        let id = try NCCLProcessGroup.makeUniqueId()
        let size = worldSize
        return onThreads(size) { rank in
            let group: NCCLProcessGroup
            do {
                group = try NCCLProcessGroup(rank: rank, size: size, uniqueId: id, device: .cuda(rank), name: "multi")
            } catch {
                fatalError("rank \(rank) of \(size) could not join the NCCL group: \(error)")
            }
            return body(group)
        }
    }

    @Test(arguments: ncclTestDTypes)
    func allReduceEveryOperation(_ dtype: DType) throws {
        let count = 257
        let results = try ranks { group -> [[Double]] in
            ReduceOperation.allCases.map { op in
                let x = tensor(contribution(rank: group.rank, seed: 1, count: count), shape: [count], dtype: dtype, device: group.device)
                group.allReduce(x, op)
                return x.doubles()
            }
        }
        let contributions = (0..<worldSize).map { contribution(rank: $0, seed: 1, count: count) }
        for (k, op) in ReduceOperation.allCases.enumerated() {
            let expected: [Double] = (0..<count).map { i in
                let column = contributions.map { $0[i] }
                switch op {
                case .sum: return column.reduce(0, +)
                case .max: return column.max()!
                case .average:
                    let mean = column.reduce(0, +) / Double(worldSize)
                    return dtype == .int32 ? mean.rounded(.towardZero) : dtype == .bfloat16 ? roundedToBFloat16(mean) : mean
                }
            }
            // bfloat16 averages round once more inside NCCL (sum, then divide); float32 differ in the last bit.
            let tolerance = op == .average && dtype != .int32 ? (dtype == .bfloat16 ? 0.07 : 1e-5) : 0
            for (rank, result) in results.enumerated() {
                #expect(maxDifference(result[k], expected) <= tolerance, "allReduce \(op) \(dtype): rank \(rank) of \(worldSize)")
            }
        }
    }

    @Test(arguments: ncclTestDTypes)
    func asyncAllReduceBroadcastGatherScatter(_ dtype: DType) throws {
        let n = 6, width = 5
        let size = worldSize
        let results = try ranks { group -> [[Double]] in
            let r = group.rank, device = group.device
            let a = tensor(contribution(rank: r, seed: 2, count: n * width), shape: [n, width], dtype: dtype, device: device)
            let work = group.allReduceAsync(a, .sum)
            let b = tensor(contribution(rank: r, seed: 3, count: n * width), shape: [n, width], dtype: dtype, device: device)
            group.broadcast(b, root: size - 1)
            let c = group.allGather(tensor(contribution(rank: r, seed: 4, count: n * width), shape: [n, width], dtype: dtype, device: device))
            let d = group.reduceScatter(tensor(contribution(rank: r, seed: 5, count: size * n * width), shape: [size * n, width],
                                               dtype: dtype, device: device), .sum)
            work.wait()
            group.barrier()
            return [a.doubles(), b.doubles(), c.doubles(), d.doubles(), c.shape.map(Double.init), d.shape.map(Double.init)]
        }
        func sum(_ seed: Int, _ count: Int) -> [Double] {
            (0..<size).map { contribution(rank: $0, seed: seed, count: count) }.reduce(into: [Double](repeating: 0, count: count)) { acc, x in
                for i in 0..<count { acc[i] += x[i] }
            }
        }
        let allReduced = sum(2, n * width)
        let broadcast = contribution(rank: size - 1, seed: 3, count: n * width)
        let gathered = (0..<size).flatMap { contribution(rank: $0, seed: 4, count: n * width) }
        let scatteredWhole = sum(5, size * n * width)
        for (rank, result) in results.enumerated() {
            #expect(maxDifference(result[0], allReduced) == 0, "async all-reduce, rank \(rank)")
            #expect(maxDifference(result[1], broadcast) == 0, "broadcast from rank \(size - 1), rank \(rank)")
            #expect(maxDifference(result[2], gathered) == 0, "all-gather, rank \(rank)")
            #expect(maxDifference(result[3], Array(scatteredWhole[(rank * n * width)..<((rank + 1) * n * width)])) == 0,
                    "reduce-scatter block of rank \(rank)")
            #expect(result[4] == [Double(size * n), Double(width)] && result[5] == [Double(n), Double(width)])
        }
    }

    /// Rows rank `s` sends to rank `p`: none from rank 0 (a peer that sends nothing), otherwise (s + 2p) % 3,
    /// which also leaves some pairs empty.
    static func rowCount(from s: Int, to p: Int) -> Int { s == 0 ? 0 : (s + 2 * p) % 3 }

    /// Row `j` of the block `s` sends to `p`: every value names sender, receiver and row.
    static func row(from s: Int, to p: Int, index j: Int, width: Int) -> [Double] {
        let base = s * 1000 + p * 100 + j * 10
        return (0..<width).map { Double(base + $0) }
    }

    @Test(arguments: [DType.float32, .int32])
    func unevenAllToAll(_ dtype: DType) throws {
        let width = 3
        let size = worldSize
        let results = try ranks { group -> ([Double], [Int]) in
            let r = group.rank
            let send = (0..<size).map { Self.rowCount(from: r, to: $0) }
            let receive = (0..<size).map { Self.rowCount(from: $0, to: r) }
            let values = (0..<size).flatMap { p in (0..<send[p]).flatMap { Self.row(from: r, to: p, index: $0, width: width) } }
            let rows = tensor(values, shape: [send.reduce(0, +), width], dtype: dtype, device: group.device)
            let out = group.allToAll(rows, sendCounts: send, receiveCounts: receive)
            return (out.doubles(), out.shape)
        }
        for (rank, (values, shape)) in results.enumerated() {
            let expected = (0..<size).flatMap { s in (0..<Self.rowCount(from: s, to: rank)).flatMap { Self.row(from: s, to: rank, index: $0, width: width) } }
            #expect(shape == [expected.count / width, width], "all-to-all output shape on rank \(rank)")
            #expect(maxDifference(values, expected) == 0, "all-to-all rows received by rank \(rank): \(values) vs \(expected)")
        }
    }

    @Test func splitByParity() throws {
        guard try NCCL.shared().supportsSplit else { return }   // NCCL < 2.18: split stops with a message instead
        let size = worldSize
        let results = try ranks { group -> [Double] in
            let child = group.split(color: group.rank % 2, key: -group.rank)   // reversed order within each color
            let x = tensor([Double(group.rank + 1)], shape: [1], dtype: .float32, device: group.device)
            child.allReduce(x, .sum)
            return [Double(child.rank), Double(child.size), x.doubles()[0]]
        }
        for (rank, result) in results.enumerated() {
            let members = (0..<size).filter { $0 % 2 == rank % 2 }
            let ordered: [Int] = Array(members.reversed())
            let expectedRank: Int = ordered.firstIndex(of: rank)!
            let expectedSum: Int = members.map { $0 + 1 }.reduce(0, +)
            let expected: [Double] = [Double(expectedRank), Double(members.count), Double(expectedSum)]
            #expect(result == expected,
                    "split rank \(rank): child rank, child size, sum over the color")
        }
    }
}
