import CUDA
import Glibc
import TestSupport
import Testing
@testable import Tensors

/// `linear` and `geluFeedForward` on the GPU, where cuBLASLt's epilogues fuse the bias, GELU and their
/// backward into the GEMMs, against the CPU backend's unfused ops on fresh random data: outputs and
/// every input gradient, float32 and bfloat16 (against float32 on the bf16-rounded inputs), rows and
/// widths that are no multiple of a tile. Together the cases use every epilogue: forward BIAS,
/// GELU_AUX, GELU_AUX_BIAS; backward BGRADB (weight gradient with bias gradient), DGELU, DGELU_BGRAD.
/// GPU allocations are poisoned with NaN, so an element an epilogue forgot to write fails.
@Suite("Fused linear ops on CUDA vs CPU", .enabled(if: Device.cudaAvailable), .serialized)
struct CUDALinearTests {
    let gpu = Device.cuda(0)

    struct Case: CustomTestStringConvertible, Sendable {
        enum Kind: Sendable { case linear(LinearActivation), feedForward }
        let name: String
        let kind: Kind
        let rows: Int
        /// `in` of `linear`; `D` of the feed-forward.
        let width: Int
        /// `out` of `linear`; `H` of the feed-forward.
        let hidden: Int
        var biases = true
        /// The input is rows 1…`rows` of a taller tensor: its address is not 256-byte aligned.
        var rowView = false
        var testDescription: String { name }

        func shapes() -> [[Int]] {
            let x = [rows + (rowView ? 2 : 0), width]
            switch kind {
            case .linear: return [x, [hidden, width]] + (biases ? [[hidden]] : [])
            case .feedForward: return biases ? [x, [hidden, width], [hidden], [width, hidden], [width]] : [x, [hidden, width], [width, hidden]]
            }
        }

        func apply(_ t: [Tensor]) -> Tensor {
            let x = rowView ? t[0].rows(1..<(1 + rows)) : t[0]
            switch kind {
            case .linear(let activation): return linear(x, weight: t[1], bias: biases ? t[2] : nil, activation: activation)
            case .feedForward:
                return biases ? geluFeedForward(x, weight1: t[1], bias1: t[2], weight2: t[3], bias2: t[4])
                              : geluFeedForward(x, weight1: t[1], bias1: nil, weight2: t[2], bias2: nil)
            }
        }

        /// cuBLASLt calls of one forward and backward. The GELU epilogues need the pre-activation's
        /// row length (`hidden`) to be a multiple of 8; the others run at any width.
        var fusedCalls: Int {
            let gelu = hidden % 8 == 0 ? 1 : 0
            switch kind {
            case .linear(.none): return 2                        // BIAS; BGRADB
            case .linear(.geluTanh): return gelu + (biases ? 1 : 0)  // GELU_AUX(_BIAS); BGRADB
            // GELU_AUX(_BIAS), BIAS; BGRADB (the GELU backward runs unfused: see `CUDAEpilogues`)
            case .feedForward: return biases ? 2 + gelu : gelu
            }
        }

        /// Whether a GELU epilogue computes part of the result (see `float32Tolerance`).
        var throughGELU: Bool { if case .linear(.none) = kind { false } else { true } }
    }

    static let cases: [Case] = [
        Case(name: "linear + bias, 37×24 → 200", kind: .linear(.none), rows: 37, width: 24, hidden: 200),
        Case(name: "linear + bias, 1000×768 → 24", kind: .linear(.none), rows: 1000, width: 768, hidden: 24),
        Case(name: "linear + GELU + bias, 37×768 → 200", kind: .linear(.geluTanh), rows: 37, width: 768, hidden: 200),
        Case(name: "linear + GELU + bias, 1000×200 → 768, row view", kind: .linear(.geluTanh), rows: 1000, width: 200, hidden: 768,
             rowView: true),
        Case(name: "linear + GELU, no bias, 1000×24 → 200", kind: .linear(.geluTanh), rows: 1000, width: 24, hidden: 200, biases: false),
        Case(name: "feed-forward, 37 rows, D 24, H 200", kind: .feedForward, rows: 37, width: 24, hidden: 200),
        Case(name: "feed-forward, 1000 rows, D 768, H 200", kind: .feedForward, rows: 1000, width: 768, hidden: 200),
        Case(name: "feed-forward, 1000 rows, D 200, H 768, row view", kind: .feedForward, rows: 1000, width: 200, hidden: 768, rowView: true),
        Case(name: "feed-forward, no biases, 37 rows, D 768, H 24", kind: .feedForward, rows: 37, width: 768, hidden: 24, biases: false),
        Case(name: "feed-forward, H 100 (GELU epilogues unfused)", kind: .feedForward, rows: 37, width: 24, hidden: 100),
        // 40 chunks of 128 rows for the bias gradient's sums: more than the finishing kernel's 32 lanes.
        Case(name: "feed-forward, 5000 rows, D 64, H 256", kind: .feedForward, rows: 5000, width: 64, hidden: 256),
    ]

    /// Fresh inputs: x ~ N(0, 1), weights ~ N(0, 1/fan-in) so pre-activations are O(1) and cross
    /// GELU's bend, biases ~ N(0, 0.5²); and the upstream gradient ~ N(0, 1).
    func inputs(_ c: Case, seed: UInt64) -> (inputs: [Tensor], upstream: Tensor) {
        var g = RandomGenerator(seed: seed)
        let made = c.shapes().enumerated().map { index, shape in
            let std = index == 0 ? 1 : shape.count == 1 ? 0.5 : 1 / Double(shape[1]).squareRoot()
            return Tensor.randomNormal(shape, std: std, generator: &g)
        }
        let outWidth = if case .feedForward = c.kind { c.width } else { c.hidden }
        return (made, Tensor.randomNormal([c.rows, outWidth], generator: &g))
    }

    /// Output and every input gradient of `c` on `device` in `dtype`.
    func run(_ c: Case, _ inputs: [Tensor], _ upstream: Tensor, on device: Device, dtype: DType) -> [[Double]] {
        let leaves = inputs.map { $0.cast(to: dtype).to(device).detached().requiringGradient() }
        let out = c.apply(leaves)
        out.backward(upstream.cast(to: dtype).to(device))
        return [out.doubles()] + leaves.map { $0.grad?.doubles() ?? [] }
    }

    /// max |a − b| / max |b| (b the reference); NaN never passes.
    func relativeError(_ a: [Double], _ b: [Double]) -> Double {
        guard a.count == b.count else { return .infinity }
        let scale = max(b.map { Swift.abs($0) }.max() ?? 0, 1e-6)
        return zip(a, b).map { $0.isNaN || $1.isNaN ? .infinity : Swift.abs($0 - $1) }.max().map { $0 / scale } ?? 0
    }

    /// float32: GEMM rounding is ~1e-6 of the largest value; through a GELU epilogue 1e-3, in case
    /// cuBLASLt's tanh is a fast approximation (`epilogueGELUIsTheTanhForm` pins its accuracy), which
    /// still fails every layout or epilogue mix-up (those are O(1)). bfloat16: 8-bit mantissas.
    func tolerance(_ c: Case, _ dtype: DType) -> Double {
        dtype == .bfloat16 ? 2e-2 : c.throughGELU ? 1e-3 : 1e-4
    }

    func lt() -> CUBLASLt { try! (Backends.backend(for: gpu) as! CUDABackend).blasLt() }

    func compare(_ c: Case, _ dtype: DType, fused: Bool) {
        CUDABackend.poisonAllocations = true
        CUDABackend.fusesEpilogues = fused
        defer { CUDABackend.poisonAllocations = false; CUDABackend.fusesEpilogues = true }
        let (inputs, upstream) = self.inputs(c, seed: UInt64(c.rows * 31 + c.width * 7 + c.hidden))
        let rounded = dtype == .bfloat16 ? inputs.map { $0.cast(to: .bfloat16).cast(to: .float32) } : inputs
        let roundedUpstream = dtype == .bfloat16 ? upstream.cast(to: .bfloat16).cast(to: .float32) : upstream
        let cpu = run(c, rounded, roundedUpstream, on: .cpu, dtype: .float32)
        let before = lt().fusedCalls
        let cuda = run(c, rounded, roundedUpstream, on: gpu, dtype: dtype)
        let calls = lt().fusedCalls - before
        #expect(calls == (fused ? c.fusedCalls : 0),
                "\(c.name) \(dtype): \(calls) cuBLASLt calls, expected \(fused ? c.fusedCalls : 0); fallbacks: \(lt().fallbackReasons)")
        for (i, (g, r)) in zip(cuda, cpu).enumerated() {
            let e = relativeError(g, r)
            #expect(e <= tolerance(c, dtype), "\(c.name) \(dtype)\(fused ? "" : " unfused"): \(i == 0 ? "output" : "gradient of input \(i - 1)") relative error \(e)")
        }
    }

    @Test(arguments: cases)
    func float32MatchesCPU(_ c: Case) { compare(c, .float32, fused: true) }

    @Test(arguments: cases)
    func bfloat16MatchesCPU(_ c: Case) { compare(c, .bfloat16, fused: true) }

    /// `CUDABackend.fusesEpilogues = false`: the same ops through the unfused primitives on the GPU.
    @Test(arguments: [DType.float32, .bfloat16])
    func unfusedFallbackMatchesCPU(_ dtype: DType) {
        for c in Self.cases { compare(c, dtype, fused: false) }
    }

    /// Two runs of the fused feed-forward give the same bits (cuBLASLt picks one algorithm per
    /// problem and its bias-gradient reductions have a fixed order), as the MoE path promises.
    @Test func fusedResultsRepeatBitForBit() {
        let c = Self.cases[6]
        let (inputs, upstream) = self.inputs(c, seed: 5)
        let first = run(c, inputs, upstream, on: gpu, dtype: .bfloat16)
        #expect(run(c, inputs, upstream, on: gpu, dtype: .bfloat16) == first)
    }

    /// The GELU backward and its bias gradient in one pass (`columnSums` mode 2) give the two
    /// primitives' bits, the gradient in place and its column sums, over more chunks of rows than the
    /// finishing kernel has lanes and a partial block of columns.
    @Test(arguments: [DType.float32, .bfloat16])
    func onePassGELUBackwardIsTheTwoPassOneBitForBit(_ dtype: DType) {
        let backend = Backends.backend(for: gpu) as! CUDABackend
        var g = RandomGenerator(seed: 11)
        let rows = 5000, cols = 264
        let h = Tensor.randomNormal([rows, cols], generator: &g).cast(to: dtype).to(gpu)
        let upstream = Tensor.randomNormal([rows, cols], generator: &g).cast(to: dtype)
        let onePass = upstream.to(gpu), onePassSums = Tensor.empty([cols], dtype: dtype, device: gpu)
        let twoPass = Tensor.empty([rows, cols], dtype: dtype, device: gpu), twoPassSums = Tensor.empty([cols], dtype: dtype, device: gpu)
        #expect(CUDABackend.geluBackwardFitsOnePass(preactivation: h, gradient: onePass))
        backend.columnSums(mode: 2, x: h, g: onePass, mean: nil, rstd: nil, out0: onePassSums, out1: nil)
        backend.unaryBackward(.geluTanh, x: h, gradOut: upstream.to(gpu), twoPass)
        backend.sumRows(twoPass, twoPassSums)
        #expect(onePass.doubles() == twoPass.doubles())
        #expect(onePassSums.doubles() == twoPassSums.doubles())
        #expect(onePass.doubles() != upstream.doubles(), "the one pass left the gradient as it was")
    }

    /// cuBLASLt's GELU is the tanh approximation, as `gelu(approximate: true)`: with an identity
    /// weight the epilogue's input is exactly a grid of values over [-6, 6) (multiples of 1/16, exact
    /// in bfloat16), so the output is GELU of known numbers. The tanh and erf forms differ by up to
    /// 4.7e-4 there (4.1e-4 at x = −3, where GELU is −0.0036); float32 must be within 1e-5·max(1, |x|)
    /// of the tanh form (cuBLASLt's fast tanh was 4.3e-6 from it on an H200, cuBLAS 13.1), bfloat16
    /// within that plus its rounding (2⁻⁸ relative). The message gives the distance to both forms.
    @Test(arguments: [DType.float32, .bfloat16])
    func epilogueGELUIsTheTanhForm(_ dtype: DType) {
        let width = 16, rows = 12
        let grid = (0..<(rows * width)).map { -6 + Double($0) / 16 }
        let identity = (0..<(width * width)).map { $0 / width == $0 % width ? 1.0 : 0.0 }
        let x = Tensor(grid, shape: [rows, width], dtype: dtype, device: gpu)
        let w = Tensor(identity, shape: [width, width], dtype: dtype, device: gpu)
        let before = lt().fusedCalls
        let y = withoutGradient { linear(x, weight: w, bias: Tensor.zeros([width], dtype: dtype, device: gpu), activation: .geluTanh) }.doubles()
        #expect(lt().fusedCalls - before == 1, "the GELU epilogue did not run: \(lt().fallbackReasons)")
        let tanhForm = grid.map { 0.5 * $0 * (1 + Glibc.tanh((2 / Double.pi).squareRoot() * ($0 + 0.044715 * $0 * $0 * $0))) }
        let erfForm = grid.map { 0.5 * $0 * (1 + Glibc.erf($0 / 2.0.squareRoot())) }
        let allowed = zip(grid, tanhForm).map { 1e-5 * max(1, Swift.abs($0)) + (dtype == .bfloat16 ? 0x1p-8 * Swift.abs($1) : 0) }
        let excess = zip(zip(y, tanhForm), allowed).map { Swift.abs($0.0 - $0.1) / $1 }.max() ?? .infinity
        let toTanh = zip(y, tanhForm).map { Swift.abs($0 - $1) }.max() ?? .infinity
        let toErf = zip(y, erfForm).map { Swift.abs($0 - $1) }.max() ?? .infinity
        #expect(excess <= 1, "\(dtype): max |y − gelu_tanh| = \(toTanh), max |y − gelu_erf| = \(toErf)")
    }
}

