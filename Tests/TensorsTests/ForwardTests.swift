import TestSupport
import Testing
@testable import Tensors

/// Forward values against direct loops in float64 (gradient checks only tie backward to forward).
@Suite("Forward values against loop references")
struct ForwardTests {
    func close(_ a: [Double], _ b: [Double], _ tol: Double = 1e-9) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { Swift.abs($0 - $1) <= tol * max(1, Swift.abs($1)) }
    }

    @Test func matmulAllTransposes() {
        let m = 4, k = 7, n = 3
        let a = randn([m, k], seed: 1).doubles(), b = randn([k, n], seed: 2).doubles()
        var ref = [Double](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { for p in 0..<k { ref[i * n + j] += a[i * k + p] * b[p * n + j] } } }
        let A = Tensor(a, shape: [m, k]), B = Tensor(b, shape: [k, n])
        #expect(close(A.matmul(B).doubles(), ref))
        #expect(close(A.transposed().matmul(B, transposeA: true).doubles(), ref))
        #expect(close(A.matmul(B.transposed(), transposeB: true).doubles(), ref))
        #expect(close(A.transposed().matmul(B.transposed(), transposeA: true, transposeB: true).doubles(), ref))
    }

    @Test func softmaxAndLogSoftmax() {
        let x = randn([3, 5], seed: 3)
        let v = x.doubles()
        var ref = [Double]()
        for r in 0..<3 {
            let row = v[(r * 5)..<(r * 5 + 5)]
            let z = row.map { libm_exp($0) }.reduce(0, +)
            ref += row.map { libm_exp($0) / z }
        }
        #expect(close(x.softmax().doubles(), ref))
        #expect(close(x.logSoftmax().doubles(), ref.map { libm_log($0) }))
    }

    @Test func layerNormMatchesDefinition() {
        let x = randn([2, 6], seed: 4, scale: 3, shift: 2), w = randn([6], seed: 5), b = randn([6], seed: 6)
        let xv = x.doubles(), wv = w.doubles(), bv = b.doubles()
        var ref = [Double]()
        for r in 0..<2 {
            let row = Array(xv[(r * 6)..<(r * 6 + 6)])
            let mu = row.reduce(0, +) / 6
            let variance = row.map { ($0 - mu) * ($0 - mu) }.reduce(0, +) / 6
            ref += row.indices.map { (row[$0] - mu) / (variance + 1e-5).squareRoot() * wv[$0] + bv[$0] }
        }
        #expect(close(layerNorm(x, weight: w, bias: b).doubles(), ref))
    }

    @Test func crossEntropyIgnoresAndAverages() {
        let logits = randn([3, 4], seed: 7)
        let v = logits.doubles()
        let t: [Int32] = [2, -100, 0]
        var total = 0.0
        for r in [0, 2] {
            let row = v[(r * 4)..<(r * 4 + 4)]
            total += libm_log(row.map { libm_exp($0) }.reduce(0, +)) - row[r * 4 + Int(t[r])]
        }
        #expect(close([crossEntropy(logits, targets: Tensor(t)).item()], [total / 2]))
        #expect(crossEntropy(logits, targets: Tensor([-100, -100, -100] as [Int32])).item().isNaN)
    }

    @Test func topKOrdersLargestFirstWithTiesToLowerIndex() {
        let x = Tensor([1, 5, 3, 5, -2, 0] as [Double], shape: [1, 6])
        let (values, indices) = x.topK(3)
        #expect(values.doubles() == [5, 5, 3])
        #expect(indices.int32s() == [1, 3, 2])
    }

    @Test func geluForms() {
        let x = Tensor([-2, -0.5, 0.3, 1.7] as [Double])
        let tanhRef = x.doubles().map { 0.5 * $0 * (1 + libm_tanh(0.7978845608028654 * ($0 + 0.044715 * $0 * $0 * $0))) }
        let erfRef = x.doubles().map { 0.5 * $0 * (1 + libm_erf($0 / 2.0.squareRoot())) }
        #expect(close(x.gelu(approximate: true).doubles(), tanhRef))
        #expect(close(x.gelu(approximate: false).doubles(), erfRef))
    }

    /// erf at values from Abramowitz & Stegun table 7.1 (and its oddness), in float64 and float32.
    @Test func erfAtKnownValues() {
        let x: [Double] = [0, 0.1, 0.5, 1, 1.5, 2, 3, -0.5, -1, -3]
        let known: [Double] = [0, 0.1124629160182849, 0.5204998778130465, 0.8427007929497149, 0.9661051464753108,
                               0.9953222650189527, 0.9999779095030014, -0.5204998778130465, -0.8427007929497149,
                               -0.9999779095030014]
        #expect(close(Tensor(x).erf().doubles(), known, 1e-15))
        #expect(close(Tensor(x).cast(to: .float32).erf().doubles(), known, 1e-6))
    }

    @Test func normalCDFAtKnownValues() {
        let x: [Double] = [0, 1, -1, 1.959963984540054, 3, -3]
        let known: [Double] = [0.5, 0.8413447460685429, 0.15865525393145707, 0.975, 0.9986501019683699, 0.0013498980316301]
        #expect(close(Tensor(x).normalCDF().doubles(), known, 1e-13))
        #expect(close(Tensor(x).cast(to: .float32).normalCDF().doubles(), known, 1e-6))
    }

    /// softplus against log(1 + eˣ) in float64 where that is finite, and its limits where it is not.
    @Test func softplusIsOverflowSafe() {
        let x: [Double] = [-20, -2, -0.3, 0, 0.7, 4, 30]
        #expect(close(Tensor(x).softplus().doubles(), x.map { libm_log(1 + libm_exp($0)) }, 1e-14))
        #expect(Tensor([1000, -1000] as [Double]).softplus().doubles() == [1000, 0])
        #expect(Tensor([100, 89, -100] as [Float]).softplus().scalars().allSatisfy { $0.isFinite })
        #expect(Tensor([100] as [Float]).softplus().scalars() == [100])
        // The derivative at 0 is sigmoid(0) = ½ (relu and |x| each have a kink there).
        let zero = Tensor([0] as [Double]).requiringGradient()
        zero.softplus().sum().backward()
        #expect(zero.grad?.doubles() == [0.5])
    }

    @Test func logSumExpMatchesALoop() {
        let x = randn([2, 3, 7], seed: 8, scale: 3)
        let v = x.doubles()
        let ref = (0..<6).map { r in libm_log(v[(r * 7)..<(r * 7 + 7)].map { libm_exp($0) }.reduce(0, +)) }
        let y = x.logSumExp(axis: -1)
        #expect(y.shape == [2, 3] && close(y.doubles(), ref, 1e-14))
        // Large logits: the max-shift keeps float32 finite where e^1000 is not.
        let big = Tensor([1000, 1000, 0, -1000, -1000, -999] as [Float], shape: [2, 3]).logSumExp().doubles()
        #expect(close(big, [1000 + libm_log(2), -999 + libm_log(1 + libm_exp(-1) + libm_exp(-1))], 1e-7))
    }

    @Test func sliceLastAxisCopiesColumns() {
        let a = Tensor((0..<24).map(Double.init), shape: [2, 3, 4])
        let s = a.slice(lastAxis: 1..<3)
        #expect(s.shape == [2, 3, 2])
        let expected: [Double] = [1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22]
        #expect(s.doubles() == expected)
        #expect(a.slice(lastAxis: 0..<4).doubles() == a.doubles())
        #expect(a.slice(lastAxis: 2..<2).shape == [2, 3, 0])
        let ints = Tensor([1, 2, 3, 4, 5, 6] as [Int32], shape: [3, 2]).slice(lastAxis: 1..<2)
        #expect(ints.shape == [3, 1] && ints.int32s() == [2, 4, 6])
        // Gradient: ones in the sliced columns, zeros elsewhere.
        let leaf = Tensor([Double](repeating: 1, count: 6), shape: [2, 3]).requiringGradient()
        leaf.slice(lastAxis: 2..<3).sum().backward()
        #expect(leaf.grad?.doubles() == [0, 0, 1, 0, 0, 1])
    }

    @Test func causalMaskKeepsLowerTriangle() {
        let x = Tensor([Double](repeating: 1, count: 9), shape: [3, 3]).causalMasked(value: -9)
        #expect(x.doubles() == [1, -9, -9, 1, 1, -9, 1, 1, 1])
        let wide = Tensor([Double](repeating: 1, count: 6), shape: [2, 3]).causalMasked(value: 0)
        #expect(wide.doubles() == [1, 1, 0, 1, 1, 1])   // 2 queries over 3 keys: the last query sees all
    }

    @Test func concatSplitTransposeRoundTrip() {
        let a = Tensor([1, 2, 3, 4, 5, 6] as [Double], shape: [2, 3]), b = Tensor([7, 8] as [Double], shape: [2, 1])
        let c = Tensor.concat([a, b], axis: -1)
        #expect(c.shape == [2, 4] && c.doubles() == [1, 2, 3, 7, 4, 5, 6, 8])
        let parts = c.split([3, 1], axis: -1)
        #expect(parts[0].doubles() == a.doubles() && parts[1].doubles() == b.doubles())
        #expect(Tensor.concat([a, a], axis: 0).doubles() == a.doubles() + a.doubles())
        #expect(a.transposed().doubles() == [1, 4, 2, 5, 3, 6])
        #expect(a.rows(1..<2).doubles() == [4, 5, 6])
    }

    @Test func indexingWithNegativeIndices() {
        let table = Tensor([1, 2, 3, 4, 5, 6] as [Double], shape: [3, 2])
        #expect(embedding(table, Tensor([2, -1, 0] as [Int32])).doubles() == [5, 6, 0, 0, 1, 2])
        let added = Tensor.zeros([3, 2], dtype: .float64).indexAdd(rows: Tensor([1, 1, -1] as [Int32]), table)
        #expect(added.doubles() == [0, 0, 4, 6, 0, 0])
    }

    @Test func castsRoundBfloat16ToNearestEven() {
        let x = Tensor([1.0, 1.00390625, 1.01171875, -3.5, 65504] as [Float])
        #expect(x.cast(to: .bfloat16).cast(to: .float32).scalars() == [1.0, 1.0, 1.015625, -3.5, 65536])
        #expect(Tensor([2.7, -1.2] as [Float]).cast(to: .int32).int32s() == [2, -1])
    }

    @Test func dropoutZeroesAboutPAndScalesTheRest() {
        var g = RandomGenerator(seed: 1)
        let y = dropout(Tensor.ones([10_000]), p: 0.25, training: true, generator: &g).scalars()
        let zeros = y.filter { $0 == 0 }.count
        #expect(abs(Double(zeros) / 10_000 - 0.25) < 0.02)
        #expect(y.allSatisfy { $0 == 0 || abs($0 - 4.0 / 3) < 1e-6 })
        #expect(dropout(Tensor.ones([4]), p: 0.5, training: false, generator: &g).scalars() == [1, 1, 1, 1])
    }
}

// Glibc math under distinct names, so a test can never pick up a Tensor method by accident.
#if canImport(Glibc)
import Glibc
#endif
func libm_exp(_ x: Double) -> Double { Glibc.exp(x) }
func libm_log(_ x: Double) -> Double { Glibc.log(x) }
func libm_tanh(_ x: Double) -> Double { Glibc.tanh(x) }
func libm_erf(_ x: Double) -> Double { Glibc.erf(x) }
