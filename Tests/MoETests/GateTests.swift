import TestSupport
#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import MoE
import NN
@testable import Tensors

/// `cv²` with the unbiased variance, by a loop.
private func cvSquared(_ v: [Double]) -> Double {
    let n = Double(v.count), mean = v.reduce(0, +) / n
    let variance = v.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / (n - 1)
    return variance / (mean * mean + 1e-10)
}

private func normalCDF(_ x: Double) -> Double { 0.5 * erfc(-x / 2.0.squareRoot()) }

/// Capacity drops by a loop: visit slots in `order`, keep while the expert has seats.
private func drops(_ idx: [Int], order: [Int], capacity: Int, experts: Int) -> [Int] {
    var seats = [Int](repeating: 0, count: experts), kept = idx
    for s in order where idx[s] >= 0 {
        if seats[idx[s]] >= capacity { kept[s] = -1 }
        seats[idx[s]] += 1
    }
    return kept
}

@Suite("Gates")
struct GateTests {
    @Test func topKGatePicksTheLargestLogitsAndSoftmaxesThem() {
        var g = RandomGenerator(seed: 1)
        let gate = TopKGate(dModel: 5, globalExpertCount: 5, topK: 2, zLossWeight: 1e-3, dtype: .float64, generator: &g)
        setIdentity(gate.linear)
        let x = randn([4, 5], seed: 2), z = x.doubles()
        let out = gate.route(x)
        var zLoss = 0.0
        for b in 0..<4 {
            let r = row(z, b, 5), top = topIndices(r, 2)
            #expect(out.expert.int32s()[(2 * b)..<(2 * b + 2)].map(Int.init) == top)
            #expect(maxDifference(row(out.score.doubles(), b, 2), softmax(top.map { r[$0] })) < 1e-12)
            let lse = log(r.map { exp($0) }.reduce(0, +))
            zLoss += lse * lse / 4
        }
        #expect(out.auxLoss == nil && out.plan == nil)
        #expect(Swift.abs(out.zLoss!.item() - 1e-3 * zLoss) < 1e-14)
    }

    @Test func gshardDropsSecondChoicesBeforeLaterFirstChoices() {
        var g = RandomGenerator(seed: 3)
        let gate = GShardGate(dModel: 3, globalExpertCount: 3, evalCapacityFactor: 0.5, dtype: .float64, generator: &g)
        setIdentity(gate.linear)
        gate.eval()
        #expect(gate.capacity(tokens: 3) == 1)   // ceil(0.5 · 3 · 2 / 3)
        // Token 0 wants (0, 1), token 1 wants (1, 2), token 2 wants (2, 0). In token order token 0's
        // second choice would take expert 1's seat; GShard's order gives it to token 1's first choice.
        let x = Tensor([3, 2, 0, 0, 3, 2, 1, 0, 3] as [Double], shape: [3, 3])
        let out = gate.route(x)
        #expect(out.expert.int32s() == [0, -1, 1, -1, 2, -1])
        #expect(out.plan!.keptCounts.int32s() == [1, 1, 1])
        #expect(out.plan!.routedCounts.int32s() == [2, 2, 2])
    }

    @Test func gshardMatchesALoopReference() {
        var g = RandomGenerator(seed: 4)
        let (b, n) = (8, 4)
        let gate = GShardGate(dModel: n, globalExpertCount: n, evalCapacityFactor: 0.6, dtype: .float64, generator: &g)
        setIdentity(gate.linear)
        gate.eval()
        let capacity = Int((0.6 * Double(b * 2) / Double(n)).rounded(.up))
        #expect(gate.capacity(tokens: b) == capacity)
        let x = randn([b, n], seed: 5), z = x.doubles()
        let out = gate.route(x)
        var idx: [Int] = [], scores: [Double] = [], meanP = [Double](repeating: 0, count: n), top1 = [Double](repeating: 0, count: n)
        for t in 0..<b {
            let r = row(z, t, n), top = topIndices(r, 2)
            idx += top
            scores += softmax(top.map { r[$0] })
            for (e, p) in softmax(r).enumerated() { meanP[e] += p / Double(b) }
            top1[top[0]] += 1 / Double(b)
        }
        let choiceMajor = (0..<2).flatMap { j in (0..<b).map { $0 * 2 + j } }
        let kept = drops(idx, order: choiceMajor, capacity: capacity, experts: n)
        #expect(kept.contains(-1), "the case should drop something")
        #expect(out.expert.int32s().map(Int.init) == kept)
        #expect(maxDifference(out.score.doubles(), scores) < 1e-12)
        let aux = Double(n) * zip(top1, meanP).map(*).reduce(0, +)
        #expect(Swift.abs(out.auxLoss!.item() - aux) < 1e-12)
    }

    @Test func gshardRandomRoutingKeepsTheSecondExpertWhereTwiceItsScoreReachesU() {
        var g = RandomGenerator(seed: 6)
        let (b, n) = (64, 4)
        let gate = GShardGate(dModel: n, globalExpertCount: n, trainingCapacityFactor: 100, dtype: .float64, generator: &g)
        setIdentity(gate.linear)
        var draw = gate.generator
        let u = Tensor.randomUniform([b, 1], dtype: .float64, generator: &draw).doubles()
        let x = randn([b, n], seed: 7)
        let out = gate.route(x)
        let idx = out.expert.int32s(), score = out.score.doubles(), z = x.doubles()
        var dropped = 0
        for t in 0..<b {
            let top = topIndices(row(z, t, n), 2)
            #expect(Int(idx[2 * t]) == top[0])
            let keep = 2 * score[2 * t + 1] >= u[t]
            #expect(Int(idx[2 * t + 1]) == (keep ? top[1] : -1))
            if !keep { dropped += 1 }
        }
        #expect(dropped > 0 && dropped < b)
    }

    @Test func switchGateDropsInTokenOrderAndUsesCountsBeforeDrops() {
        var g = RandomGenerator(seed: 8)
        let (b, n) = (6, 4)
        let gate = SwitchGate(dModel: n, globalExpertCount: n, evalCapacityFactor: 0.7, dtype: .float64, generator: &g)
        setIdentity(gate.linear)
        gate.eval()
        #expect(gate.capacity(tokens: b) == 2)   // ceil(0.7 · 6 / 4)
        // Four tokens prefer expert 2 (two seats): the third and the fourth are dropped.
        let x = Tensor([0, 0, 2, 0, 1, 0, 3, 0, 0, 0, 4, 1, 5, 0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0] as [Double], shape: [b, n])
        let out = gate.route(x), z = x.doubles()
        var idx: [Int] = [], score: [Double] = [], f = [Double](repeating: 0, count: n), meanP = f
        for t in 0..<b {
            let p = softmax(row(z, t, n)), e = topIndices(p, 1)[0]
            idx.append(e)
            score.append(p[e])
            f[e] += 1 / Double(b)
            for j in 0..<n { meanP[j] += p[j] / Double(b) }
        }
        let kept = drops(idx, order: Array(0..<b), capacity: 2, experts: n)
        #expect(kept == [2, 2, -1, 0, -1, 1])
        #expect(out.expert.int32s().map(Int.init) == kept)
        #expect(maxDifference(out.score.doubles(), score) < 1e-12)
        let aux = Double(n) * zip(f, meanP).map(*).reduce(0, +)
        #expect(Swift.abs(out.auxLoss!.item() - aux) < 1e-12)
    }

    @Test func switchJitterMultipliesTheInputByUniformNoiseInTraining() {
        var g = RandomGenerator(seed: 9)
        let (b, n) = (5, 3)
        let gate = SwitchGate(dModel: n, globalExpertCount: n, trainingCapacityFactor: 10, jitter: .input(epsilon: 0.01), dtype: .float64, generator: &g)
        setIdentity(gate.linear)
        var draw = gate.generator
        let noise = Tensor.randomUniform([b, n], low: 0.99, high: 1.01, dtype: .float64, generator: &draw).doubles()
        #expect(noise.allSatisfy { $0 >= 0.99 && $0 <= 1.01 } && noise.contains { $0 != 1 })
        let x = randn([b, n], seed: 10, scale: 3), xv = x.doubles()
        let out = gate.route(x)
        let expected = (0..<b).map { t in softmax((0..<n).map { xv[t * n + $0] * noise[t * n + $0] }).max()! }
        #expect(maxDifference(out.score.doubles(), expected) < 1e-12)
        gate.eval()   // no jitter in eval
        let plain = (0..<b).map { t in softmax(row(xv, t, n)).max()! }
        #expect(maxDifference(gate.route(x).score.doubles(), plain) < 1e-12)
    }

    @Test func switchLogitsJitterIsFastMoEsAdditiveForm() {
        var g = RandomGenerator(seed: 11)
        let (b, n) = (5, 3)
        let gate = SwitchGate(dModel: n, globalExpertCount: n, trainingCapacityFactor: 10, jitter: .logits(epsilon: 0.1), dtype: .float64, generator: &g)
        setIdentity(gate.linear)
        var draw = gate.generator
        let noise = Tensor.randomUniform([b, n], low: 0.9, high: 1.1, dtype: .float64, generator: &draw).doubles()
        let x = randn([b, n], seed: 12), xv = x.doubles()
        let expected = (0..<b).map { t in softmax((0..<n).map { xv[t * n + $0] + noise[t * n + $0] }).max()! }
        #expect(maxDifference(gate.route(x).score.doubles(), expected) < 1e-12)
    }

    @Test func noisyGateLoadUsesTheNormalCDFOfTheMarginOverTheThreshold() {
        var g = RandomGenerator(seed: 13)
        let (b, d, n, k) = (6, 3, 4, 2)
        let gate = NoisyTopKGate(dModel: d, globalExpertCount: n, topK: k, dtype: .float64, generator: &g)
        gate.wGate.value = randn([d, n], seed: 14)
        gate.wNoise.value = randn([d, n], seed: 15)
        let x = randn([b, d], seed: 16), xv = x.doubles(), wg = gate.wGate.value.doubles(), wn = gate.wNoise.value.doubles()
        var draw = gate.generator
        let eps = Tensor.randomNormal([b, n], dtype: .float64, generator: &draw).doubles()
        let out = gate.route(x)
        var importance = [Double](repeating: 0, count: n), load = importance
        for t in 0..<b {
            var clean = [Double](repeating: 0, count: n), sigma = clean, noisy = clean
            for e in 0..<n {
                for i in 0..<d {
                    clean[e] += xv[t * d + i] * wg[i * n + e]
                    sigma[e] += xv[t * d + i] * wn[i * n + e]
                }
                sigma[e] = log(1 + exp(sigma[e])) + 0.01
                noisy[e] = clean[e] + eps[t * n + e] * sigma[e]
            }
            let top = topIndices(noisy, k + 1)
            let scores = softmax(top.prefix(k).map { noisy[$0] })
            #expect(out.expert.int32s()[(t * k)..<(t * k + k)].map(Int.init) == Array(top.prefix(k)))
            #expect(maxDifference(row(out.score.doubles(), t, k), scores) < 1e-12)
            for (j, e) in top.prefix(k).enumerated() { importance[e] += scores[j] }
            for e in 0..<n {
                let threshold = top.prefix(k).contains(e) ? noisy[top[k]] : noisy[top[k - 1]]
                load[e] += normalCDF((clean[e] - threshold) / sigma[e])
            }
        }
        let aux = cvSquared(importance) + cvSquared(load)
        #expect(Swift.abs(out.auxLoss!.item() - aux) < 1e-10, "aux \(out.auxLoss!.item()) vs \(aux)")

        gate.eval()   // clean logits, importance term only
        let evalOut = gate.route(x)
        var evalImportance = [Double](repeating: 0, count: n)
        for t in 0..<b {
            var clean = [Double](repeating: 0, count: n)
            for e in 0..<n { for i in 0..<d { clean[e] += xv[t * d + i] * wg[i * n + e] } }
            let top = topIndices(clean, k), scores = softmax(top.map { clean[$0] })
            for (j, e) in top.enumerated() { evalImportance[e] += scores[j] }
        }
        #expect(Swift.abs(evalOut.auxLoss!.item() - cvSquared(evalImportance)) < 1e-10)
    }

    @Test func noisyGateAuxLossGradientMatchesFiniteDifferences() {
        var g = RandomGenerator(seed: 17)
        let gate = NoisyTopKGate(dModel: 3, globalExpertCount: 4, topK: 2, dtype: .float64, generator: &g)
        let start = gate.generator, x = randn([6, 3], seed: 18)
        let error = gradientCheckError([randn([3, 4], seed: 19), randn([3, 4], seed: 20)]) { ws in
            gate.wGate.value = ws[0]
            gate.wNoise.value = ws[1]
            gate.generator = start   // the same ε at every evaluation
            return gate.route(x).auxLoss!.reshaped([1])
        }
        #expect(error < 1e-6)
    }

    @Test func normalCDFMatchesErfc() {
        let values: [Double] = [-6, -2.5, -0.3, 0, 0.7, 3]
        let got = Tensor(values).normalCDF().doubles()
        #expect(maxDifference(got, values.map(normalCDF)) < 1e-12)
    }

    @Test func zeroGateSendsEverySlotToExpertZero() {
        let out = ZeroGate(globalExpertCount: 3, topK: 2).route(randn([4, 5], seed: 21))
        #expect(out.expert.int32s() == [Int32](repeating: 0, count: 8))
        #expect(out.score.doubles() == [Double](repeating: 0.5, count: 8))
    }
}
