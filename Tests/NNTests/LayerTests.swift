import TestSupport
import Glibc
import Testing
@testable import NN
import Tensors

@Suite("Layers")
struct LayerTests {
    @Test func embeddingPicksRowsAndZeroesNegativeIds() {
        var g = RandomGenerator(seed: 5)
        let emb = Embedding(6, 3, generator: &g)
        emb.cast(to: .float64)
        let table = emb.weight.value.doubles()
        let ids: [Int32] = [4, 0, 4, 5, -1, 2]
        let y = emb(Tensor(ids, shape: [2, 3]))
        #expect(y.shape == [2, 3, 3])
        var ref = [Double]()
        for id in ids { for c in 0..<3 { ref.append(id < 0 ? 0 : table[Int(id) * 3 + c]) } }
        #expect(y.doubles() == ref)
    }

    @Test func layerNormMatchesLoopReference() {
        let (rows, d) = (5, 7)
        let ln = LayerNorm(d, epsilon: 1e-5, dtype: .float64)
        ln.weight.value = randn([d], seed: 2)
        ln.bias.value = randn([d], seed: 3)
        let x = randn([rows, d], seed: 1, scale: 3)
        let xv = x.doubles(), w = ln.weight.value.doubles(), b = ln.bias.value.doubles()
        var ref = [Double]()
        for r in 0..<rows {
            let row = Array(xv[(r * d)..<((r + 1) * d)])
            let mean = row.reduce(0, +) / Double(d)
            let variance = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(d)
            for c in 0..<d { ref.append((row[c] - mean) / (variance + 1e-5).squareRoot() * w[c] + b[c]) }
        }
        #expect(maxDifference(ln(x).doubles(), ref) < 1e-6)
    }

    @Test func rmsNormMatchesLoopReferenceAndGradients() {
        let (rows, d) = (4, 6)
        let norm = RMSNorm(d, epsilon: 1e-6, dtype: .float64)
        norm.weight.value = randn([d], seed: 7)
        let x = randn([2, rows / 2, d], seed: 8, scale: 2)
        let xv = x.doubles(), w = norm.weight.value.doubles()
        var ref = [Double]()
        for r in 0..<rows {
            let row = Array(xv[(r * d)..<((r + 1) * d)])
            let ms = row.map { $0 * $0 }.reduce(0, +) / Double(d)
            for c in 0..<d { ref.append(row[c] / (ms + 1e-6).squareRoot() * w[c]) }
        }
        let y = norm(x)
        #expect(y.shape == [2, rows / 2, d])
        #expect(maxDifference(y.doubles(), ref) < 1e-12)
        #expect(gradientCheckError([x, norm.weight.value]) { xs in
            let n = RMSNorm(d, dtype: .float64)
            n.weight.value = xs[1]
            return n(xs[0])
        } < 1e-6)
    }

    @Test func mlpMatchesLoopReference() {
        var g = RandomGenerator(seed: 11)
        let (n, d, h) = (3, 4, 5)
        let mlp = MLP(d, hidden: h, generator: &g)
        mlp.cast(to: .float64)
        let x = randn([n, d], seed: 12)
        let xv = x.doubles()
        let w1 = mlp.fc1.weight.value.doubles(), b1 = mlp.fc1.bias!.value.doubles()
        let w2 = mlp.fc2.weight.value.doubles(), b2 = mlp.fc2.bias!.value.doubles()
        var ref = [Double]()
        for r in 0..<n {
            var hidden = [Double](repeating: 0, count: h)
            for j in 0..<h {
                var z = b1[j]
                for c in 0..<d { z += xv[r * d + c] * w1[j * d + c] }
                hidden[j] = geluTanhReference(z)
            }
            for o in 0..<d {
                var y = b2[o]
                for j in 0..<h { y += hidden[j] * w2[o * h + j] }
                ref.append(y)
            }
        }
        #expect(maxDifference(mlp(x).doubles(), ref) < 1e-12)
    }

    /// With GELU(tanh) the MLP runs as one fused op; with the CPU's unfused epilogues its output and
    /// every gradient equal its layers called one by one, to the bit. Float64 finite differences too.
    @Test func mlpGradientsEqualItsLayersComposed() {
        var g = RandomGenerator(seed: 13)
        let mlp = MLP(6, hidden: 10, generator: &g)
        let x = randn([2, 5, 6], seed: 14).cast(to: .float32)
        func values(_ f: (Tensor) -> Tensor) -> [[Float]] {
            for p in mlp.parameters() { p.grad = nil }
            let leaf = x.detached().requiringGradient()
            let y = f(leaf)
            y.backward(randn(y.shape, seed: 15).cast(to: .float32))
            return [y.scalars(), leaf.grad!.scalars()] + mlp.parameters().map { $0.grad!.scalars() }
        }
        #expect(values { mlp($0) } == values { mlp.fc2(mlp.activation(mlp.fc1($0))) })

        mlp.cast(to: .float64)
        let x64 = randn([7, 6], seed: 16), w = randn([7, 6], seed: 17)
        #expect(parameterGradientError(mlp.parameters()) { (mlp(x64) * w).sum() } < 1e-6)
    }

    @Test func activationsApplyTheirFunction() {
        let x = Tensor([-2, -0.5, 0, 0.7, 3] as [Double])
        let xv = x.doubles()
        #expect(maxDifference(Activation(.relu)(x).doubles(), xv.map { max($0, 0) }) == 0)
        #expect(maxDifference(Activation(.silu)(x).doubles(), xv.map { $0 / (1 + exp(-$0)) }) < 1e-12)
        #expect(maxDifference(Activation(.gelu(approximate: true))(x).doubles(), xv.map(geluTanhReference)) < 1e-12)
        #expect(maxDifference(Activation(.gelu(approximate: false))(x).doubles(),
                              xv.map { 0.5 * $0 * (1 + erf($0 / 2.0.squareRoot())) }) < 1e-12)
    }

    @Test func sequentialChainsLayersAndNamesThem() {
        var g = RandomGenerator(seed: 4)
        let a = Linear(3, 4, generator: &g), b = Linear(4, 2, generator: &g)
        let net = Sequential([a, Activation(.relu), b])
        #expect(net.namedParameters().map(\.name) == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"])
        let x = Tensor([1, 2, 3, -1, 0, 2] as [Float], shape: [2, 3])
        #expect(net(x).scalars() == b(a(x).relu()).scalars())
    }

    @Test func dropoutIsIdentityInEvalAndRepeatsFromASavedState() {
        var g = RandomGenerator(seed: 9)
        let drop = Dropout(0.5, generator: &g)
        let x = Tensor.ones([1000])
        drop.eval()
        #expect(drop(x).scalars() == x.scalars())
        drop.train()
        let saved = drop.generator
        let first = drop(x).scalars()
        #expect(first.allSatisfy { $0 == 0 || $0 == 2 })
        let kept = first.filter { $0 != 0 }.count
        #expect(kept > 400 && kept < 600)
        #expect(drop(x).scalars() != first)   // the generator moved on
        drop.generator = saved
        #expect(drop(x).scalars() == first)
        // Two dropouts made from one generator draw different masks.
        var h = RandomGenerator(seed: 9)
        let d1 = Dropout(0.5, generator: &h), d2 = Dropout(0.5, generator: &h)
        #expect(d1.generator != d2.generator)
        #expect(d1(x).scalars() != d2(x).scalars())
    }
}
