import TestSupport
import Testing
@testable import Tensors

/// The routing plan by its definition (MoEBackend.routingPlan), slot by slot, quadratic.
private func referencePlan(_ expert: [Int32], tokens t: Int, k: Int, n: Int, capacity: Int?, priority: RoutingPriority, mask: [Double]?)
    -> (kept: [Int32], before: [Int32], after: [Int32], position: [Int32], slot: [Int32], token: [Int32], expertOfRow: [Int32]) {
    let slots = t * k
    let routed = (0..<slots).map { s -> Int32 in (mask.map { $0[s] < 0 } ?? false) ? -1 : expert[s] }
    func rank(_ s: Int) -> Int { priority == .tokenMajor ? s : (s % k) * t + s / k }
    var kept = routed
    if let c = capacity {
        for s in 0..<slots where routed[s] >= 0 {
            let ahead = (0..<slots).filter { routed[$0] == routed[s] && rank($0) < rank(s) }.count
            if ahead >= c { kept[s] = -1 }
        }
    }
    let before = (0..<n).map { g in Int32(routed.filter { $0 == g }.count) }
    let after = (0..<n).map { g in Int32(kept.filter { $0 == g }.count) }
    var position = [Int32](repeating: -1, count: slots)
    var slot = [Int32](repeating: -1, count: slots), token = slot, expertOfRow = slot
    for s in 0..<slots where kept[s] >= 0 {
        let e = Int(kept[s])
        let p = after[0..<e].reduce(0) { $0 + Int($1) } + (0..<s).filter { kept[$0] == kept[s] }.count
        position[s] = Int32(p)
        slot[p] = Int32(s)
        token[p] = Int32(s / k)
        expertOfRow[p] = Int32(e)
    }
    return (kept, before, after, position, slot, token, expertOfRow)
}

@Suite("MoE routing primitives")
struct RoutingTests {
    @Test(arguments: [(5, 1, 3), (7, 2, 4), (6, 3, 5), (1, 2, 2), (9, 2, 6)])
    func routingPlanMatchesItsDefinition(_ shape: (Int, Int, Int)) {
        let (t, k, n) = shape
        var g = RandomGenerator(seed: UInt64(t * 100 + k * 10 + n))
        // Values in [-1, n - 2]: a -1 in most tables, and expert n-1 always empty.
        let expert = (0..<(t * k)).map { _ in Int32(Double(g.nextUniform()) * Double(n)) - 1 }
        let mask = (0..<(t * k)).map { _ in Double(g.nextUniform()) - 0.3 }
        for capacity in [nil, 0, 1, 2] as [Int?] {
            for priority in [RoutingPriority.tokenMajor, .choiceMajor] {
                for useMask in [false, true] {
                    let m = useMask ? Tensor(mask.map(Float.init), shape: [t, k]) : nil
                    let plan = routingPlan(Tensor(expert, shape: [t, k]), expertCount: n, capacity: capacity, priority: priority, slotMask: m)
                    let r = referencePlan(expert, tokens: t, k: k, n: n, capacity: capacity, priority: priority, mask: useMask ? mask : nil)
                    let label = "T=\(t) k=\(k) N=\(n) C=\(String(describing: capacity)) \(priority) mask=\(useMask)"
                    #expect(plan.keptExpert.int32s() == r.kept, "\(label): kept")
                    #expect(plan.keptExpert.shape == [t, k])
                    #expect(plan.routedCounts.int32s() == r.before, "\(label): counts before drop")
                    #expect(plan.keptCounts.int32s() == r.after, "\(label): counts")
                    #expect(plan.rowOfSlot.int32s() == r.position, "\(label): rowOfSlot")
                    #expect(plan.slotOfRow.int32s() == r.slot, "\(label): slotOfRow")
                    #expect(plan.tokenOfRow.int32s() == r.token, "\(label): tokenOfRow")
                    #expect(plan.expertOfRow.int32s() == r.expertOfRow, "\(label): expertOfRow")
                }
            }
        }
    }

    /// Two ranks' tables, each token picking two of two experts; concatenated (rank 0 first) they are
    /// t0 (0, 1), t1 (1, 0), t2 (0, 1), t3 (0, 1). With two seats, choice-major keeps t0 (0, 1),
    /// t1 (1, -), t2 (0, -): expert 0 seats t0 and t2's first choices, expert 1 t1's first and t0's
    /// second. Token-major keeps rank 0's four slots. The offsets are worked out by hand from the
    /// formula in `MoEBackend.routingPlan` (rank 0's counts per choice: [1, 1] and [1, 1]; rank 1's:
    /// [2, 0] and [0, 2]).
    @Test func capacityOffsetDropsWhatTheConcatenatedBatchDrops() {
        let rank0 = Tensor([0, 1, 1, 0] as [Int32], shape: [2, 2]), rank1 = Tensor([0, 1, 0, 1] as [Int32], shape: [2, 2])
        func kept(_ table: Tensor, _ offset: [Int32], _ priority: RoutingPriority) -> [Int32] {
            routingPlan(table, expertCount: 2, capacity: 2, capacityOffset: Tensor(offset, shape: [2, 2]), priority: priority).keptExpert.int32s()
        }
        // Choice-major, rank 0: choice 0 after nothing; choice 1 after rank 1's first choices.
        #expect(kept(rank0, [0, 0, 2, 0], .choiceMajor) == [0, 1, 1, -1])
        // Rank 1: choice 0 after rank 0's first choices; choice 1 after both ranks' first and rank 0's second.
        #expect(kept(rank1, [1, 1, 2, 2], .choiceMajor) == [0, -1, -1, -1])
        // Without the offsets rank 1 keeps more than the concatenated batch allows.
        #expect(routingPlan(rank1, expertCount: 2, capacity: 2, priority: .choiceMajor).keptExpert.int32s() == [0, 1, 0, 1])
        // Token-major: all of rank 0's slots come first.
        #expect(kept(rank0, [0, 0, 0, 0], .tokenMajor) == [0, 1, 1, 0])
        #expect(kept(rank1, [2, 2, 2, 2], .tokenMajor) == [-1, -1, -1, -1])
        let plan = routingPlan(rank1, expertCount: 2, capacity: 2, capacityOffset: Tensor([1, 1, 2, 2] as [Int32], shape: [2, 2]),
                               priority: .choiceMajor)
        #expect(plan.counts.int32s() == [2, 2, 1, 0], "routed, then kept counts")
        #expect(plan.slotOfRow.int32s() == [0, -1, -1, -1])
    }

    /// W ranks' random tables: with the offsets counted by brute force (the other ranks' slots of the
    /// same expert whose global priority rank is below this rank's choice-j slots), each rank keeps
    /// exactly its rows of the concatenated table's plan, for both priorities, with and without a mask.
    @Test(arguments: [(2, 5, 2, 3), (3, 4, 2, 4), (4, 3, 1, 2), (2, 6, 3, 5)])
    func capacityOffsetGivesEachRankItsShareOfTheConcatenatedPlan(_ shape: (Int, Int, Int, Int)) {
        let (w, t, k, n) = shape
        var g = RandomGenerator(seed: UInt64(w * 1000 + t * 100 + k * 10 + n))
        // Expert 0 is popular, so capacities bind.
        let expert = (0..<(w * t * k)).map { _ -> Int32 in
            let u = Double(g.nextUniform())
            return u < 0.4 ? 0 : Int32(Double(g.nextUniform()) * Double(n + 1)) - 1
        }
        let mask = (0..<(w * t * k)).map { _ in g.nextUniform() - 0.2 }
        for capacity in [0, 1, 2, t * k / n + 1] {
            for priority in [RoutingPriority.tokenMajor, .choiceMajor] {
                for useMask in [false, true] {
                    let whole = routingPlan(Tensor(expert, shape: [w * t, k]), expertCount: n, capacity: capacity, priority: priority,
                                            slotMask: useMask ? Tensor(mask, shape: [w * t, k]) : nil).keptExpert.int32s()
                    // Global priority rank of slot (rank r, token b, choice j).
                    func globalRank(_ r: Int, _ b: Int, _ j: Int) -> Int {
                        priority == .tokenMajor ? (r * t + b) * k + j : j * w * t + r * t + b
                    }
                    func routed(_ i: Int) -> Int32 { useMask && mask[i] < 0 ? -1 : expert[i] }
                    for r in 0..<w {
                        var offset = [Int32](repeating: 0, count: k * n)
                        for j in 0..<k {
                            for other in 0..<w where other != r {
                                for b in 0..<t {
                                    for j2 in 0..<k where globalRank(other, b, j2) < globalRank(r, 0, j) {
                                        let e = routed((other * t + b) * k + j2)
                                        if e >= 0 { offset[j * n + Int(e)] += 1 }
                                    }
                                }
                            }
                        }
                        let slots = (r * t * k)..<((r + 1) * t * k)
                        let plan = routingPlan(Tensor(Array(expert[slots]), shape: [t, k]), expertCount: n, capacity: capacity,
                                               capacityOffset: Tensor(offset, shape: [k, n]), priority: priority,
                                               slotMask: useMask ? Tensor(Array(mask[slots]), shape: [t, k]) : nil)
                        #expect(plan.keptExpert.int32s() == Array(whole[slots]),
                                "W=\(w) T=\(t) k=\(k) N=\(n) C=\(capacity) \(priority) mask=\(useMask) rank \(r)")
                    }
                }
            }
        }
    }

    /// Combine's gradients by finite differences, with as many kept rows as columns (S == d == 4),
    /// where a per-row score vector could be mistaken for a per-column one.
    @Test func unpermuteGradientsMatchFiniteDifferencesWhenRowsEqualWidth() {
        let plan = routingPlan(Tensor([0, -1, 1, 0, -1, 2] as [Int32], shape: [3, 2]), expertCount: 3)
        let error = gradientCheckError([randn([4, 4], seed: 10), randn([3, 2], seed: 11)]) {
            unpermuteTokens($0[0], by: plan, score: $0[1])
        }
        #expect(error < 1e-6)
    }

    @Test func choiceMajorPriorityGivesFirstChoicesTheSeats() {
        // Token 0 picks (0, 1), token 1 picks (1, 0); one seat each. Token-major: token 0 takes both
        // seats. Choice-major: both first choices win.
        let expert = Tensor([0, 1, 1, 0] as [Int32], shape: [2, 2])
        #expect(routingPlan(expert, expertCount: 2, capacity: 1, priority: .tokenMajor).keptExpert.int32s() == [0, 1, -1, -1])
        #expect(routingPlan(expert, expertCount: 2, capacity: 1, priority: .choiceMajor).keptExpert.int32s() == [0, -1, 1, -1])
    }

    /// y_e = x_e W_eᵀ by a triple loop in Double.
    @Test func groupedLinearMatchesPerExpertLoops() {
        let sizes = [3, 0, 4, 1], e = 4, inW = 5, outW = 3, s = 8
        let x = randn([s, inW], seed: 1), w = randn([e, outW, inW], seed: 2), b = randn([e, outW], seed: 3)
        let expertOfRow = Tensor(sizes.enumerated().flatMap { Array(repeating: Int32($0.offset), count: $0.element) })
        let y = groupedLinear(x, weight: w, bias: b, groupSizes: sizes, expertOfRow: expertOfRow).doubles()
        let xv = x.doubles(), wv = w.doubles(), bv = b.doubles()
        var row = 0
        for (ex, n) in sizes.enumerated() {
            for r in row..<(row + n) {
                for o in 0..<outW {
                    var acc = bv[ex * outW + o]
                    for i in 0..<inW { acc += xv[r * inW + i] * wv[(ex * outW + o) * inW + i] }
                    #expect(Swift.abs(y[r * outW + o] - acc) < 1e-12)
                }
            }
            row += n
        }
    }

    @Test func groupedLinearGradientsMatchFiniteDifferences() {
        let sizes = [2, 0, 3], expertOfRow = Tensor([0, 0, 2, 2, 2] as [Int32])
        let error = gradientCheckError([randn([5, 4], seed: 4), randn([3, 2, 4], seed: 5), randn([3, 2], seed: 6)]) {
            groupedLinear($0[0], weight: $0[1], bias: $0[2], groupSizes: sizes, expertOfRow: expertOfRow)
        }
        #expect(error < 1e-6)
    }

    @Test(arguments: [UnaryOp.geluTanh, .geluErf, .relu, .silu])
    func groupedFeedForwardGradientsMatchFiniteDifferences(activation: UnaryOp) {
        let sizes = [2, 0, 3], expertOfRow = Tensor([0, 0, 2, 2, 2] as [Int32])
        let inputs = [randn([5, 4], seed: 11), randn([3, 6, 4], seed: 12), randn([3, 6], seed: 13), randn([3, 4, 6], seed: 14), randn([3, 4], seed: 15)]
        let error = gradientCheckError(inputs) {
            groupedFeedForward($0[0], weight1: $0[1], bias1: $0[2], weight2: $0[3], bias2: $0[4], activation: activation,
                               groupSizes: sizes, expertOfRow: expertOfRow)
        }
        #expect(error < 1e-6, "\(activation)")
    }

    /// The one-node feed-forward runs, unfused, the primitives of the composed layers in their
    /// order: the same output and gradients to the bit, with and without biases.
    @Test(arguments: [true, false])
    func groupedFeedForwardIsTheComposedLayers(biases: Bool) {
        let sizes = [3, 0, 4, 1], expertOfRow = Tensor(sizes.enumerated().flatMap { Array(repeating: Int32($0.offset), count: $0.element) })
        var g = RandomGenerator(seed: 21)
        func input(_ shape: [Int]) -> Tensor { Tensor.randomNormal(shape, generator: &g) }
        let x = input([8, 5]), w1 = input([4, 7, 5]), b1 = input([4, 7]), w2 = input([4, 5, 7]), b2 = input([4, 5]), upstream = input([8, 5])
        func run(fused: Bool) -> [[Float]] {
            let leaves = [x, w1, b1, w2, b2].map { $0.detached().requiringGradient() }
            let (b1v, b2v) = biases ? (leaves[2], leaves[4]) : (nil, nil)
            let y = fused
                ? groupedFeedForward(leaves[0], weight1: leaves[1], bias1: b1v, weight2: leaves[3], bias2: b2v, activation: .geluTanh,
                                     groupSizes: sizes, expertOfRow: expertOfRow)
                : groupedLinear(groupedLinear(leaves[0], weight: leaves[1], bias: b1v, groupSizes: sizes, expertOfRow: expertOfRow).gelu(),
                                weight: leaves[3], bias: b2v, groupSizes: sizes, expertOfRow: expertOfRow)
            (y * upstream).sum().backward()
            return [y.scalars()] + leaves.compactMap { $0.grad?.scalars() }
        }
        let fused = run(fused: true), composed = run(fused: false)
        #expect(fused.count == (biases ? 6 : 4))
        #expect(fused == composed)
    }

    /// Groups given as counts in a tensor (as the MoE layer gives them, with more rows than the
    /// groups hold: the slots the routing dropped) compute what host sizes compute on the grouped
    /// rows, read the sizes only when asked, and every gradient of a grouped row is the same.
    @Test func groupsFromACountsTensorMatchHostSizes() {
        let sizes = [3, 0, 4, 1], extra = 5, rows = sizes.reduce(0, +)
        let counts = Tensor(sizes.map(Int32.init))
        let fromCounts = RowGroups(counts: counts)
        #expect(fromCounts.knownSizes == nil && fromCounts.count == 4)
        var g = RandomGenerator(seed: 51)
        let x = Tensor.randomNormal([rows + extra, 6], generator: &g), w1 = Tensor.randomNormal([4, 7, 6], generator: &g)
        let b1 = Tensor.randomNormal([4, 7], generator: &g), w2 = Tensor.randomNormal([4, 6, 7], generator: &g)
        let b2 = Tensor.randomNormal([4, 6], generator: &g)
        let labels = sizes.enumerated().flatMap { Array(repeating: Int32($0.offset), count: $0.element) }
        func run(_ groups: RowGroups, rows count: Int) -> [[Float]] {
            let leaves = [x.rows(0..<count), w1, b1, w2, b2].map { $0.detached().requiringGradient() }
            let expertOfRow = Tensor(labels + [Int32](repeating: -1, count: count - rows))
            let y = groupedFeedForward(leaves[0], weight1: leaves[1], bias1: leaves[2], weight2: leaves[3], bias2: leaves[4],
                                       activation: .geluTanh, groups: groups, expertOfRow: expertOfRow)
            (y.rows(0..<rows) * 1.5).sum().backward()
            return [y.rows(0..<rows).scalars(), leaves[0].grad!.rows(0..<rows).scalars()] + leaves.dropFirst().map { $0.grad!.scalars() }
        }
        #expect(run(fromCounts, rows: rows + extra) == run(RowGroups(sizes: sizes), rows: rows))
        #expect(fromCounts.knownSizes == sizes)   // the CPU loops read them
    }

    /// The router's fused choice is the composed ops' (`topK` of the logits or of `softmax + bias`,
    /// `gather`, `softmax`), to the bit, forward and backward; ties go to the lower expert.
    @Test(arguments: [RouterChoice.logits, .probabilities])
    func routerTopKIsTheComposedOps(choice: RouterChoice) {
        var g = RandomGenerator(seed: 61)
        let logits = Tensor.randomNormal([9, 6], generator: &g), upstream = Tensor.randomNormal([9, 2], generator: &g)
        for bias in [nil, Tensor.randomNormal([6], std: 0.1, generator: &g)] as [Tensor?] {
            let z1 = logits.detached().requiringGradient(), z2 = logits.detached().requiringGradient()
            let (expert, score) = z1.routerTopK(2, by: choice, bias: bias)
            var keys = choice == .logits ? z2.detached() : z2.detached().softmax()
            if let bias { keys = keys + bias }
            let reference = keys.topK(2).indices
            let referenceScore = z2.gather(lastAxis: reference).softmax()
            (score * upstream).sum().backward()
            (referenceScore * upstream).sum().backward()
            #expect(expert.int32s() == reference.int32s(), "\(choice) bias \(bias != nil)")
            #expect(score.scalars() == referenceScore.scalars() && z1.grad!.scalars() == z2.grad!.scalars(), "\(choice) bias \(bias != nil)")
        }
        let tie = Tensor([1, 3, 3, 0] as [Float], shape: [1, 4]).routerTopK(2, by: choice).expert
        #expect(tie.int32s() == [1, 2])
    }

    @Test(arguments: [RouterChoice.logits, .probabilities])
    func routerTopKGradientMatchesFiniteDifferences(choice: RouterChoice) {
        let error = gradientCheckError([randn([7, 5], seed: 62)]) { $0[0].routerTopK(3, by: choice, bias: randn([5], seed: 63, scale: 0.1)).score }
        #expect(error < 1e-6, "\(choice)")
    }

    @Test func anExpertWithNoRowsGetsAZeroWeightGradient() {
        let w = randn([3, 2, 4], seed: 7).requiringGradient()
        // The gradient buffer starts uninitialised: the empty expert's slice must be written as zeros.
        groupedLinear(randn([5, 4], seed: 8), weight: w, groupSizes: [2, 0, 3]).sum().backward()
        let g = w.grad!.doubles()
        #expect(g[8..<16].allSatisfy { $0 == 0 })
        #expect(g[0..<8].contains { $0 != 0 } && g[16..<24].contains { $0 != 0 })
    }

    @Test func scatteredIsTheTransposeOfGather() {
        let indices = Tensor([2, 0, -1, 1, 1, 3] as [Int32], shape: [2, 3])
        let dense = Tensor([1, 2, 3, 4, 5, 6] as [Double], shape: [2, 3]).scattered(lastAxis: indices, width: 4)
        #expect(dense.doubles() == [2, 0, 1, 0, 0, 9, 0, 6])
        let error = gradientCheckError([randn([2, 3], seed: 9)]) { $0[0].scattered(lastAxis: indices, width: 4) }
        #expect(error < 1e-6)
    }
}
