import CUDA
import Synchronization

// Matrix products with fused epilogues on CUDA: one cuBLASLt call each (`CUBLASLt` keeps the
// descriptors and the algorithm of every problem it has seen), or the unfused primitives where
// cuBLASLt cannot run a problem or `fusesEpilogues` is off.

extension CUDABackend: EpilogueBackend {
    /// Whether epilogues run fused in cuBLASLt. On by default; tests turn it off to check that the
    /// unfused path (the one taken wherever cuBLASLt has no algorithm) gives the same results.
    public static var fusesEpilogues: Bool {
        get { epiloguesEnabled.load(ordering: .relaxed) }
        set { epiloguesEnabled.store(newValue, ordering: .relaxed) }
    }
    private static let epiloguesEnabled = Atomic<Bool>(true)

    /// The cuBLASLt handle of this device (tests read its counters of fused calls and fallbacks).
    public func blasLt() throws -> CUBLASLt { try gpu.blasLt() }

    public func matmul(_ a: Tensor, _ b: Tensor, _ out: Tensor, transposeA: Bool, transposeB: Bool, epilogue: MatmulEpilogue) {
        // The GELU backward runs after a plain GEMM, in place on its product: cuBLASLt runs
        // DGELU(_BGRAD) as the GEMM plus a separate epilogue kernel at a fraction of the memory
        // bandwidth (H200, cuBLAS 13.1, bf16 [32768, 1408]: 380 µs, against 92 µs for our GELU
        // backward and a column sum; ncu on `fastmoe bench moe-layer --preset fine`). With a bias
        // gradient, one pass does both (`columnSums` mode 2): the product is read once, not twice.
        if case .geluBackward(let preactivation, let biasGradient) = epilogue {
            matmul(a, b, out, transposeA: transposeA, transposeB: transposeB, alpha: 1, beta: 0)
            if let biasGradient, Self.geluBackwardFitsOnePass(preactivation: preactivation, gradient: out) {
                columnSums(mode: 2, x: preactivation, g: out, mean: nil, rstd: nil, out0: biasGradient, out1: nil)
                return
            }
            unaryBackward(.geluTanh, x: preactivation, gradOut: out, out)
            if let biasGradient { sumRows(out, biasGradient) }
            return
        }
        if Self.fusesEpilogues && fusedMatmul(a, b, out, transposeA: transposeA, transposeB: transposeB, epilogue: epilogue) { return }
        unfusedMatmul(a, b, out, transposeA: transposeA, transposeB: transposeB, epilogue: epilogue)
    }

    /// One cuBLASLt GEMM, or false when it cannot run. Empty products stay unfused: a bias gradient
    /// over no rows must be zeros, which no GEMM writes.
    private func fusedMatmul(_ a: Tensor, _ b: Tensor, _ out: Tensor, transposeA: Bool, transposeB: Bool, epilogue: MatmulEpilogue) -> Bool {
        let m = out.shape[0], n = out.shape[1], k = transposeA ? a.shape[0] : a.shape[1]
        guard m > 0, n > 0, k > 0, a.dtype == .float32 || a.dtype == .bfloat16 else { return false }
        let lt: CUBLASLt
        do { lt = try gpu.blasLt() } catch { fatalError("\(error)") }
        // The bias (or bias gradient) vector, and the pre-activation matrix laid out like `out`.
        let (mode, vector, aux): (LtEpilogue, Tensor?, Tensor?) = switch epilogue {
        case .bias(let bias): (.bias, bias, nil)
        case .gelu(let bias, let preactivation): (bias == nil ? .geluAux : .geluAuxBias, bias, preactivation)
        case .geluBackward(let preactivation, let biasGradient): (biasGradient == nil ? .dgelu : .dgeluBiasGradient, biasGradient, preactivation)
        case .biasGradientOfA(let biasGradient): (.biasGradientA, biasGradient, nil)
        }
        return lt.rowMajorMatmul(transA: transposeA, transB: transposeB, m: m, n: n, k: k,
                                 a: a.pointer, lda: transposeA ? m : k, b: b.pointer, ldb: transposeB ? k : n,
                                 c: out.pointer, ldc: n, dtypes: Self.gemmTypes(a.dtype, "matmul"), epilogue: mode,
                                 bias: vector?.pointer ?? 0, aux: aux?.pointer ?? 0, auxLd: aux == nil ? 0 : n, stream: gpu.stream)
    }
}
