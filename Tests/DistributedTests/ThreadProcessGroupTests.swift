// The thread group against direct computations: the shared self-check for W = 1...4 (every
// collective, float32, bfloat16, int32 and float64), hand-written small cases, and the messages
// that misuse stops with (exit tests).
import Testing
import Tensors
@testable import Distributed

@Suite struct ThreadProcessGroupTests {
    @Test(arguments: [1, 2, 3, 4])
    func everyCollectiveMatchesTheDirectComputation(worldSize: Int) throws {
        let comparisons = try ThreadProcessGroup.run(worldSize: worldSize) { group in
            try CollectiveSelfCheck.run(group: group)
        }
        #expect(comparisons.count == worldSize)
        #expect(comparisons.allSatisfy { $0 > 50 })
    }

    @Test func theSelfCheckCatchesAWrongResult() throws {
        #expect(throws: CollectiveCheckFailure.self) {
            try ThreadProcessGroup.run(worldSize: 2) { group in
                try CollectiveSelfCheck.run(group: OffByOneGroup(group), dtypes: [.float32])
            }
        }
    }

    @Test func runReturnsTheResultsInRankOrder() throws {
        let ranks = try ThreadProcessGroup.run(worldSize: 4) { group in [group.rank, group.size] }
        #expect(ranks == [[0, 4], [1, 4], [2, 4], [3, 4]])
    }

    @Test func allReduceOfFourRanks() throws {
        let results = try ThreadProcessGroup.run(worldSize: 4) { group in
            let x = Tensor([Float(group.rank), 10, -Float(group.rank)], dtype: .float32)
            group.allReduce(x, .sum)
            let y = Tensor([Float(group.rank), 1], dtype: .bfloat16)
            group.allReduce(y, .average)
            let z = Tensor([Int32(group.rank * 3 - 4)])
            group.allReduce(z, .max)
            return x.scalars() + y.scalars() + z.scalars()
        }
        for r in results { #expect(r == [6, 40, -6, 1.5, 1, 5]) }
    }

    @Test func asyncAllReducesRunInTheOrderTheyStarted() throws {
        // Rank 0 waits for the second work first, rank 1 for the first: both must still pair
        // a with a and b with b, and a blocking collective runs what is still queued before itself.
        let results = try ThreadProcessGroup.run(worldSize: 2) { group in
            let a = Tensor([Float(group.rank + 1)])
            let b = Tensor([Float(10 * (group.rank + 1)), 1], dtype: .bfloat16)
            let c = Tensor([Int32(group.rank)])
            let workA = group.allReduceAsync(a, .sum)
            let workB = group.allReduceAsync(b, .max)
            let workC = group.allReduceAsync(c, .sum)
            if group.rank == 0 { workB.wait(); workA.wait() } else { workA.wait(); workB.wait() }
            let gathered = group.allGather(Tensor([Float(group.rank)]))
            workC.wait()
            return a.scalars() + b.scalars() + c.scalars() + gathered.scalars()
        }
        for r in results { #expect(r == [3, 20, 1, 1, 0, 1]) }
    }

    @Test func unevenAllToAllWithASilentPeer() throws {
        // Rank p sends (p+1) rows to each later rank and none to earlier ones; rank 0 receives nothing
        // from anyone but itself, rank 2 sends only to itself.
        let results = try ThreadProcessGroup.run(worldSize: 3) { group in
            let r = group.rank
            let sendCounts = (0..<3).map { $0 >= r ? r + 1 : 0 }
            let receiveCounts = (0..<3).map { $0 <= r ? $0 + 1 : 0 }
            var rows: [Float] = []
            for d in 0..<3 { for j in 0..<sendCounts[d] { rows += [Float(100 * r + 10 * d + j), -1] } }
            let x = Tensor(rows, shape: [sendCounts.reduce(0, +), 2])
            return group.allToAll(x, sendCounts: sendCounts, receiveCounts: receiveCounts).scalars()
        }
        #expect(results[0] == [0, -1])
        #expect(results[1] == [10, -1, 110, -1, 111, -1])
        #expect(results[2] == [20, -1, 120, -1, 121, -1, 220, -1, 221, -1, 222, -1])
    }

    @Test func splitOrdersByKeyThenRank() throws {
        // Colors 0,1,0,1,0 with keys making rank 4 first in color 0, ranks 1 and 3 tied (rank breaks the tie).
        let results = try ThreadProcessGroup.run(worldSize: 5) { group in
            let keys = [5, 0, 5, 0, -1]
            let sub = group.split(color: group.rank % 2, key: keys[group.rank])
            let gathered = sub.allGather(Tensor([Int32(group.rank)])).int32s()
            let nested = sub.split(color: 0, key: 0)
            nested.barrier()
            return [sub.rank, sub.size] + gathered.map(Int.init) + [nested.size]
        }
        #expect(results[0] == [1, 3, 4, 0, 2, 3])
        #expect(results[1] == [0, 2, 1, 3, 2])
        #expect(results[2] == [2, 3, 4, 0, 2, 3])
        #expect(results[3] == [1, 2, 1, 3, 2])
        #expect(results[4] == [0, 3, 4, 0, 2, 3])
    }

    @Test func aThrowingRankIsRethrown() {
        struct Boom: Error {}
        #expect(throws: Boom.self) {
            _ = try ThreadProcessGroup.run(worldSize: 3) { group in
                group.barrier()
                if group.rank == 1 { throw Boom() }
                return group.rank
            }
        }
    }

    @Test func mismatchedShapesStopNamingTheOpAndRanks() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = try ThreadProcessGroup.run(worldSize: 2) { group in
                group.allReduce(Tensor.zeros([2 + group.rank]), .sum)
            }
        }
        let message = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(message.contains("allReduce on group 'world'"))
        #expect(message.contains("float32 [2]") && message.contains("float32 [3]"))
    }

    @Test func countsThatDisagreeWithThePeerStop() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = try ThreadProcessGroup.run(worldSize: 2) { group in
                // Both ranks send one row to each peer, but rank 1 expects two from rank 0.
                let receive = group.rank == 1 ? [2, 1] : [1, 1]
                _ = group.allToAll(Tensor.zeros([2, 4]), sendCounts: [1, 1], receiveCounts: receive)
            }
        }
        let message = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(message.contains("allToAll on group 'world': rank 1 expects 2 rows from rank 0, which sends it 1"))
    }

    @Test func sendCountsThatMissTheRowsStop() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = try ThreadProcessGroup.run(worldSize: 2) { group in
                _ = group.allToAll(Tensor.zeros([3, 4]), sendCounts: [1, 1], receiveCounts: [1, 1])
            }
        }
        let message = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(message.contains("send counts [1, 1] add up to 2 but it passes 3 rows"))
    }

    @Test func aRankThatLeavesEarlyIsNamed() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = try ThreadProcessGroup.run(worldSize: 3) { group in
                if group.rank != 2 { group.barrier() }
            }
        }
        let message = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(message.contains("barrier on group 'world': rank 2 returned while rank"))
    }
}

/// A group whose all-reduce is off by one: the self-check must notice.
final class OffByOneGroup: ForwardingGroup, @unchecked Sendable {
    let inner: any ProcessGroup
    init(_ inner: any ProcessGroup) { self.inner = inner }
    func allReduce(_ tensor: Tensor, _ op: ReduceOperation) {
        inner.allReduce(tensor, op)
        let shifted = Tensor(tensor.scalars().map { $0 + 1 }, shape: tensor.shape, dtype: tensor.dtype)
        pointer(tensor).copyMemory(from: pointer(shifted), byteCount: tensor.byteCount)
    }
}
