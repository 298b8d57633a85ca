import TestSupport
import Glibc
import Testing
@testable import NN
import Tensors

@Suite("Causal self-attention")
struct AttentionTests {
    @Test func headSplitIsThePermutationBTHdToBHTd() {
        let (b, t, h, hd) = (2, 3, 4, 5)
        let values = (0..<(b * t * h * hd)).map(Double.init)
        let x = Tensor(values, shape: [b, t, h * hd])
        let split = CausalSelfAttention.splitHeads(x, heads: h)
        #expect(split.shape == [b * h, t, hd])
        var ref = [Double]()
        for bi in 0..<b { for hi in 0..<h { for ti in 0..<t { for e in 0..<hd {
            ref.append(values[((bi * t + ti) * h + hi) * hd + e])
        } } } }
        #expect(split.doubles() == ref)
        let splitT = CausalSelfAttention.splitHeadsTransposed(x, heads: h)
        #expect(splitT.shape == [b * h, hd, t])
        #expect(splitT.transposed().doubles() == ref)
        #expect(CausalSelfAttention.mergeHeads(split, batch: b, length: t, heads: h).doubles() == values)
    }

    /// Per batch, per head, per query: scores over keys j ≤ t, softmax, weighted values; then proj.
    static func naiveAttention(_ attn: CausalSelfAttention, _ x: Tensor) -> [Double] {
        let (b, t, d) = (x.shape[0], x.shape[1], x.shape[2])
        let h = attn.heads, hd = d / h
        let xv = x.doubles()
        let wq = attn.qkv.weight.value.doubles(), bq = attn.qkv.bias!.value.doubles()
        let wp = attn.proj.weight.value.doubles(), bp = attn.proj.bias!.value.doubles()
        var out = [Double]()
        for bi in 0..<b {
            // qkv[ti][o] = Σ_c x[bi, ti, c] W[o, c] + b[o]
            let qkv = (0..<t).map { ti in
                (0..<(3 * d)).map { o in (0..<d).map { xv[(bi * t + ti) * d + $0] * wq[o * d + $0] }.reduce(bq[o], +) }
            }
            for ti in 0..<t {
                var merged = [Double](repeating: 0, count: d)
                for hi in 0..<h {
                    let q = Array(qkv[ti][(hi * hd)..<((hi + 1) * hd)])
                    let scores = (0...ti).map { j in
                        (0..<hd).map { q[$0] * qkv[j][d + hi * hd + $0] }.reduce(0, +) / Double(hd).squareRoot()
                    }
                    let top = scores.max()!
                    let e = scores.map { exp($0 - top) }
                    let z = e.reduce(0, +)
                    for j in 0...ti { for c in 0..<hd { merged[hi * hd + c] += e[j] / z * qkv[j][2 * d + hi * hd + c] } }
                }
                for o in 0..<d { out.append((0..<d).map { merged[$0] * wp[o * d + $0] }.reduce(bp[o], +)) }
            }
        }
        return out
    }

    @Test func matchesNaivePerHeadLoopWithCausalMask() {
        var g = RandomGenerator(seed: 21)
        let attn = CausalSelfAttention(8, heads: 2, generator: &g)
        attn.cast(to: .float64)
        let x = randn([2, 5, 8], seed: 22)
        let y = attn(x)
        #expect(y.shape == [2, 5, 8])
        #expect(maxDifference(y.doubles(), Self.naiveAttention(attn, x)) < 1e-12)
    }

    @Test func laterTokensDoNotChangeEarlierOutputs() {
        var g = RandomGenerator(seed: 23)
        let attn = CausalSelfAttention(6, heads: 3, generator: &g)
        attn.cast(to: .float64)
        let x = randn([1, 4, 6], seed: 24)
        var changed = x.doubles()
        for i in 18..<24 { changed[i] += 5 }   // the last token only
        let a = attn(x).doubles(), b = attn(Tensor(changed, shape: [1, 4, 6])).doubles()
        #expect(maxDifference(Array(a[0..<18]), Array(b[0..<18])) == 0)
        #expect(maxDifference(Array(a[18...]), Array(b[18...])) > 1e-3)
    }

    @Test func gradientsMatchFiniteDifferences() {
        var g = RandomGenerator(seed: 25)
        let attn = CausalSelfAttention(8, heads: 2, generator: &g)
        attn.cast(to: .float64)
        let x = randn([2, 4, 8], seed: 26)
        #expect(gradientCheckError([x]) { xs in attn(xs[0]) } < 1e-6)
        let w = randn([2, 4, 8], seed: 27)
        #expect(parameterGradientError(attn.parameters()) { (attn(x) * w).sum() } < 1e-5)
    }
}
