import NN
import Synchronization
import Tensors
import Testing
@testable import Distributed

/// The data-parallel gradient sync over thread ranks: bucketed, asynchronous averages equal a plain
/// all-reduce of every gradient; buckets start during backward; the global norm counts replicated
/// parameters once and sums sharded ones; every rank must build the same model.
@Suite("Gradient sync")
struct GradientSyncTests {
    /// Parameters of a toy model, float64, the same values on every rank: `c` is used on rank 0 only
    /// and `d` nowhere, so the flags for "no gradient here" are exercised.
    static func parameters() -> [(name: String, parameter: Parameter)] {
        func p(_ values: [Double]) -> Parameter { Parameter(Tensor(values, shape: [values.count])) }
        return [("a", p([0.1, -0.2, 0.3, 0.4, -0.5, 0.6])), ("b", p([1, 2, 3, 4, 5, 6].map { $0 / 7 })),
                ("c", p([0.5, 0.25, -1, 2])), ("d", p([9, 9])), ("e", p([0.3, 0.1, -0.4, 0.2, 0.7, -0.6]))]
    }

    /// Rank `r`'s loss: its own data `x_r`, through every parameter but `d` (and `c` only on rank 0).
    static func loss(_ ps: [(name: String, parameter: Parameter)], rank: Int) -> Tensor {
        let v = Dictionary(uniqueKeysWithValues: ps.map { ($0.name, $0.parameter.value) })
        let x = Tensor((0..<6).map { Double($0 * (rank + 2)) / 10 - 0.4 }, shape: [6])
        var loss = (v["e"]! * (v["a"]! * x + v["b"]! * v["b"]!).tanh()).sum() + (v["a"]! * v["e"]! * x).sum()
        if rank == 0 { loss = loss + (v["c"]! * v["c"]!).sum() }
        return loss
    }

    /// The reference: a plain backward, then one blocking average per gradient (zeros where this rank
    /// has none); `local` says whether this rank had a gradient of its own.
    static func plainAverages(_ group: any ProcessGroup) -> [String: (local: Bool, average: [Double])] {
        let plain = parameters()
        loss(plain, rank: group.rank).backward()
        var averages: [String: (local: Bool, average: [Double])] = [:]
        for (name, p) in plain {
            let g = p.grad ?? Tensor.zeros(p.shape, dtype: .float64)
            group.allReduce(g, .average)
            averages[name] = (p.grad != nil, g.doubles())
        }
        return averages
    }

    @Test(arguments: [1, 2, 3]) func bucketedAverageEqualsAPlainAllReduce(worldSize: Int) throws {
        let results = try ThreadProcessGroup.run(worldSize: worldSize) { group -> ([String: [Double]?], [String: [Double]?]) in
            let expected = Self.plainAverages(group).mapValues { Optional($0.average) }
            // Under test: 100-byte buckets (two 6-element float64 gradients at most).
            let synced = Self.parameters()
            let sync = try GradientSync(parameters: synced, world: group, bucketBytes: 100)
            sync.backward(Self.loss(synced, rank: group.rank))
            return (expected, Dictionary(uniqueKeysWithValues: synced.map { ($0.name, $0.parameter.grad?.doubles()) }))
        }
        for (rank, (expected, got)) in results.enumerated() {
            for name in ["a", "b", "c", "e"] {
                #expect(got[name]! == expected[name]!, "rank \(rank), \(name): synced \(String(describing: got[name]!)), plain \(String(describing: expected[name]!))")
            }
            // Unused on every rank: no gradient, as a one-rank run would have (the optimizer skips it).
            #expect(got["d"]! == nil, "rank \(rank): d got a gradient though no rank used it")
        }
    }

    /// A placement's `scale` multiplies its group's averaged gradient (the expert-parallel convention
    /// divides expert gradients by W_ep) and leaves the other groups and the "no gradient" flags alone.
    @Test func placementScaleMultipliesTheAverage() throws {
        let results = try ThreadProcessGroup.run(worldSize: 2) { group -> ([String: [Double]?], [String: [Double]?]) in
            var expected: [String: [Double]?] = [:]
            for (name, plain) in Self.plainAverages(group) {
                expected[name] = !plain.local && name == "d" ? nil : plain.average.map { ["b", "c", "d"].contains(name) ? $0 * 0.25 : $0 }
            }
            // b, c and d are experts (c used on rank 0 only, d nowhere).
            let synced = Self.parameters().map { entry -> (name: String, parameter: Parameter) in
                ["b", "c", "d"].contains(entry.name) ? (entry.name, Parameter(entry.parameter.value, group: .expert)) : entry
            }
            let sync = try GradientSync(parameters: synced, bucketBytes: 100) { kind in
                kind == .expert ? ParameterPlacement(replicas: group, scale: 0.25) : ParameterPlacement(replicas: group)
            }
            sync.backward(Self.loss(synced, rank: group.rank))
            return (expected, Dictionary(uniqueKeysWithValues: synced.map { ($0.name, $0.parameter.grad?.doubles()) }))
        }
        for (rank, (expected, got)) in results.enumerated() {
            for name in ["a", "b", "c", "d", "e"] {
                let (g, w) = (got[name]!, expected[name]!)
                #expect((g == nil) == (w == nil), "rank \(rank), \(name): gradient \(String(describing: g)), expected \(String(describing: w))")
                if let g, let w { #expect(zip(g, w).allSatisfy { abs($0 - $1) <= 1e-15 }, "rank \(rank), \(name): \(g) vs \(w)") }
            }
        }
    }

    @Test func bucketsAreBoundedAndInReverseOrder() throws {
        let sync = try GradientSync(parameters: Self.parameters(), world: SingleProcessGroup(device: .cpu), bucketBytes: 100)
        // 48 + 16 + 32 bytes fit in 100; b's 48 more would not.
        #expect(sync.bucketNames == [["e", "d", "c"], ["b", "a"]])
        let small = try GradientSync(parameters: Self.parameters(), world: SingleProcessGroup(device: .cpu), bucketBytes: 50)
        #expect(small.bucketNames == [["e"], ["d", "c"], ["b"], ["a"]])
        let one = try GradientSync(parameters: Self.parameters(), world: SingleProcessGroup(device: .cpu), bucketBytes: 25 << 20)
        #expect(one.bucketNames == [["e", "d", "c", "b", "a"]])
        let tiny = try GradientSync(parameters: Self.parameters(), world: SingleProcessGroup(device: .cpu), bucketBytes: 1)
        #expect(tiny.bucketNames == [["e"], ["d"], ["c"], ["b"], ["a"]], "a parameter larger than the bound gets a bucket of its own")
    }

    /// The first bucket's all-reduce starts before `backward()` returns: communication overlaps the
    /// rest of backward. (The bucket of `d`, which no rank uses, and of `c`, unused on rank 1, waits
    /// for `finish()`, and holds back the buckets after it: the order must be the same everywhere.)
    @Test func bucketsStartDuringBackward() throws {
        let logs = try ThreadProcessGroup.run(worldSize: 2) { group -> [String] in
            let recorder = RecordingGroup(group)
            let ps = Self.parameters()
            let sync = try GradientSync(parameters: ps, world: recorder, bucketBytes: 50)
            sync.record {
                Self.loss(ps, rank: group.rank).backward()
                recorder.note("backward returned")
            }
            sync.finish()
            return recorder.log.withLock { $0 }
        }
        for log in logs {
            #expect(log.filter { $0 == "allReduceAsync" }.count == 4)
            let firstLaunch = try #require(log.firstIndex(of: "allReduceAsync"))
            #expect(firstLaunch < log.firstIndex(of: "backward returned")!, "no bucket started during backward: \(log)")
        }
    }

    @Test func aGroupWithoutPlacementIsAnError() {
        let ps = Self.parameters()
        ps[2].parameter.group = .expert
        #expect {
            _ = try GradientSync(parameters: ps) { group in group == .shared ? ParameterPlacement(replicas: SingleProcessGroup(device: .cpu)) : nil }
        } throws: { error in
            "\(error)".contains("parameter 'c' is in group 'expert', for which no process group was given")
        }
    }

    /// Two ranks, each holding other experts (shards = the world, replicas = itself) and the same
    /// averaged shared gradient: the norm adds the experts of both ranks and the shared part once.
    @Test func globalNormCountsSharedOnceAndSumsExpertShards() throws {
        let shared: [Double] = [3, 0, -4, 1]
        let experts: [[Double]] = [[1, 2, 2], [0, -5, 1]]
        let results = try ThreadProcessGroup.run(worldSize: 2) { group -> (Double, Double, [Double], [Double]) in
            let s = Parameter(Tensor(shared.map { _ in 0 }, shape: [4]))
            let x = Parameter(Tensor([0, 0, 0] as [Double], shape: [3]), group: .expert)
            s.grad = Tensor(shared, shape: [4])
            x.grad = Tensor(experts[group.rank], shape: [3])
            let alone = group.split(color: group.rank, key: 0)
            let sync = try GradientSync(parameters: [("s", s), ("x", x)]) { g in
                g == .shared ? ParameterPlacement(replicas: group) : ParameterPlacement(replicas: alone, shards: group)
            }
            let norm = sync.globalGradNorm()
            let clipped = sync.clipGradNorm(maxNorm: 2)
            return (norm, clipped, s.grad!.doubles(), x.grad!.doubles())
        }
        let expected = (shared + experts[0] + experts[1]).map { $0 * $0 }.reduce(0, +).squareRoot()  // √(26 + 9 + 26)
        for (rank, (norm, clipped, s, x)) in results.enumerated() {
            #expect(abs(norm - expected) < 1e-12 && abs(clipped - expected) < 1e-12, "rank \(rank): norm \(norm), expected \(expected)")
            let factor = 2 / (expected + 1e-6)
            #expect(zip(s, shared).allSatisfy { abs($0 - $1 * factor) < 1e-12 })
            #expect(zip(x, experts[rank]).allSatisfy { abs($0 - $1 * factor) < 1e-12 })
        }
    }

    @Test func broadcastGivesEveryRankRankZerosValues() throws {
        let values = try ThreadProcessGroup.run(worldSize: 3) { group -> [Double] in
            let p = Parameter(Tensor([Double(group.rank), 10 + Double(group.rank)], shape: [2]))
            let sync = try GradientSync(parameters: [("p", p)], world: group)
            sync.broadcastParameters()
            return p.value.doubles()
        }
        #expect(values == [[0, 10], [0, 10], [0, 10]])
    }
}

/// Forwards to a group and logs the collectives started, with notes of the caller's in between.
final class RecordingGroup: ForwardingGroup, @unchecked Sendable {
    let inner: any ProcessGroup
    let log = Mutex<[String]>([])
    init(_ inner: any ProcessGroup) { self.inner = inner }
    func note(_ s: String) { log.withLock { $0.append(s) } }

    func allReduce(_ tensor: Tensor, _ op: ReduceOperation) { note("allReduce"); inner.allReduce(tensor, op) }
    func allReduceAsync(_ tensor: Tensor, _ op: ReduceOperation) -> any CollectiveWork {
        note("allReduceAsync")
        return inner.allReduceAsync(tensor, op)
    }
}
