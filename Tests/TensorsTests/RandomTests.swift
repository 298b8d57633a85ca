import TestSupport
import Testing
@testable import Tensors

@Suite("Philox random generator")
struct RandomTests {
    // Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
    @Test func knownAnswerVectors() {
        let zero = Philox.block((0, 0, 0, 0), key: (0, 0))
        #expect([zero.0, zero.1, zero.2, zero.3] == [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8])
        let ones = Philox.block((.max, .max, .max, .max), key: (.max, .max))
        #expect([ones.0, ones.1, ones.2, ones.3] == [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd])
        let pi = Philox.block((0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344), key: (0xa409_3822, 0x299f_31d0))
        #expect([pi.0, pi.1, pi.2, pi.3] == [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1])
    }

    /// Fixed values of our element-to-counter mapping; the GPU kernels are checked against these.
    @Test func fixedTensorValuesForSeed() {
        var g = RandomGenerator(seed: 42)
        let u = Tensor.randomUniform([6], generator: &g).scalars()
        let expected = (0..<6).map { Philox.uniform(Philox.word($0, seed: 42, offset: 0)) }
        #expect(u == expected)
        #expect(g.offset == 1)
        let n = Tensor.randomNormal([3], generator: &g).scalars()
        #expect(n == (0..<3).map { Philox.normal($0, seed: 42, offset: 1) })
    }

    /// Rows 2..<4 of a [4, 5] draw, drawn alone from element 10, are that slice of the whole draw (how
    /// an expert-parallel rank draws its tokens' noise); the generator advances by one draw either way.
    @Test func aDrawFromAFirstElementIsThatSliceOfTheWholeDraw() {
        for normal in [false, true] {
            var a = RandomGenerator(seed: 9), b = a
            func draw(_ shape: [Int], _ g: inout RandomGenerator, first: Int) -> [Float] {
                (normal ? Tensor.randomNormal(shape, generator: &g, firstElement: first)
                        : Tensor.randomUniform(shape, low: -1, high: 2, generator: &g, firstElement: first)).scalars()
            }
            let whole = draw([4, 5], &a, first: 0), slice = draw([2, 5], &b, first: 10)
            #expect(slice == Array(whole[10..<20]), "normal=\(normal)")
            #expect(slice != Array(whole[0..<10]), "normal=\(normal)")
            #expect(a == b)
        }
    }

    @Test func uniformMoments() {
        var g = RandomGenerator(seed: 7)
        let u = Tensor.randomUniform([200_000], low: -1, high: 3, dtype: .float64, generator: &g).doubles()
        let mean = u.reduce(0, +) / Double(u.count)
        let variance = u.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(u.count)
        #expect(abs(mean - 1) < 0.01)
        #expect(abs(variance - 16.0 / 12) < 0.01)
        #expect(u.allSatisfy { $0 >= -1 && $0 < 3 })
    }

    @Test func normalMoments() {
        var g = RandomGenerator(seed: 8)
        let x = Tensor.randomNormal([200_000], mean: 2, std: 0.5, generator: &g).scalars().map(Double.init)
        let mean = x.reduce(0, +) / Double(x.count)
        let variance = x.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(x.count)
        let skew = x.map { pow(($0 - mean) / 0.5, 3) }.reduce(0, +) / Double(x.count)
        #expect(abs(mean - 2) < 0.005)
        #expect(abs(variance - 0.25) < 0.005)
        #expect(abs(skew) < 0.05)
    }

    @Test func sameSeedSameNumbersDifferentDrawsDiffer() {
        var a = RandomGenerator(seed: 3), b = RandomGenerator(seed: 3)
        let x = Tensor.randomNormal([16], generator: &a).scalars()
        #expect(x == Tensor.randomNormal([16], generator: &b).scalars())
        #expect(x != Tensor.randomNormal([16], generator: &a).scalars())
    }
}

#if canImport(Glibc)
import Glibc
#endif
