// Numeric values of the cuBLASLt enums we pass, read from `cublasLt.h` of the `nvidia-cublas` 13.10
// wheel (site-packages/nvidia/cu13/include). They are ABI: the same in cuBLAS 12.x, whose headers
// define them identically. Each attribute's C type is given because `...SetAttribute` checks the
// byte count of the value against it.

/// `cublasLtEpilogue_t`, column-major (cuBLASLt's convention: "rows of D" are the rows of the
/// column-major result). ``CUBLASLt/rowMajorMatmul(transA:transB:m:n:k:a:lda:b:ldb:c:ldc:dtypes:epilogue:bias:aux:auxLd:stream:)``
/// says what each one means for our row-major tensors.
public enum LtEpilogue: UInt32, Sendable, CustomStringConvertible {
    /// `CUBLASLT_EPILOGUE_DEFAULT = 1`: D = A·B.
    case none = 1
    /// `CUBLASLT_EPILOGUE_BIAS = 4`: D = A·B + bias, bias one value per row of D, broadcast over columns.
    case bias = 4
    /// `CUBLASLT_EPILOGUE_GELU_AUX = GELU (32) | 128`: aux = A·B, D = gelu(aux).
    case geluAux = 160
    /// `CUBLASLT_EPILOGUE_GELU_AUX_BIAS = GELU_AUX | BIAS`: aux = A·B + bias, D = gelu(aux).
    case geluAuxBias = 164
    /// `CUBLASLT_EPILOGUE_DGELU = 64 | 128`: D = (A·B) ⊙ gelu'(aux).
    case dgelu = 192
    /// `CUBLASLT_EPILOGUE_DGELU_BGRAD = DGELU | 16`: D as DGELU, bias = Σ over the columns of D (one value per row).
    case dgeluBiasGradient = 208
    /// `CUBLASLT_EPILOGUE_BGRADA = 256`: D = A·B, bias = Σ over k of op(A) (one value per row of D).
    case biasGradientA = 256
    /// `CUBLASLT_EPILOGUE_BGRADB = 512`: D = A·B, bias = Σ over k of op(B) (one value per column of D).
    case biasGradientB = 512

    /// Whether the epilogue reads or writes `CUBLASLT_MATMUL_DESC_BIAS_POINTER`.
    public var usesBias: Bool { [.bias, .geluAuxBias, .dgeluBiasGradient, .biasGradientA, .biasGradientB].contains(self) }
    /// Whether it reads or writes the GELU input matrix at `CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER`.
    public var usesAux: Bool { [.geluAux, .geluAuxBias, .dgelu, .dgeluBiasGradient].contains(self) }

    public var description: String {
        switch self {
        case .none: "DEFAULT"
        case .bias: "BIAS"
        case .geluAux: "GELU_AUX"
        case .geluAuxBias: "GELU_AUX_BIAS"
        case .dgelu: "DGELU"
        case .dgeluBiasGradient: "DGELU_BGRAD"
        case .biasGradientA: "BGRADA"
        case .biasGradientB: "BGRADB"
        }
    }
}

/// Attribute ids of `cublasLtMatmulDescAttributes_t` and `cublasLtMatmulPreferenceAttributes_t`,
/// and the status codes we act on.
enum LtConstant {
    /// `CUBLASLT_MATMUL_DESC_TRANSA = 3` (int32_t, a `cublasOperation_t`).
    static let descTransA: Int32 = 3
    /// `CUBLASLT_MATMUL_DESC_TRANSB = 4` (int32_t).
    static let descTransB: Int32 = 4
    /// `CUBLASLT_MATMUL_DESC_EPILOGUE = 7` (uint32_t, a `cublasLtEpilogue_t`).
    static let descEpilogue: Int32 = 7
    /// `CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8` (a device pointer): the bias, or the bias gradient written.
    static let descBiasPointer: Int32 = 8
    /// `CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER = 11` (a device pointer): the GELU input matrix.
    static let descAuxPointer: Int32 = 11
    /// `CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = 12` (int64_t): "must be divisible by 8 and be no less
    /// than the number of rows in the output matrix" for the GELU epilogues.
    static let descAuxLeadingDimension: Int32 = 12

    /// `CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1` (uint64_t).
    static let preferenceMaxWorkspaceBytes: Int32 = 1
    /// `CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_{A,B,C,D}_BYTES = 5, 6, 7, 8` (uint32_t, default 256): the
    /// heuristic assumes 256-byte aligned operands unless told less.
    static let preferenceMinAlignmentA: Int32 = 5
    static let preferenceMinAlignmentB: Int32 = 6
    static let preferenceMinAlignmentC: Int32 = 7
    static let preferenceMinAlignmentD: Int32 = 8

    /// `CUDA_R_32F = 0` (`cudaDataType`, library_types.h): the scale type (alpha, beta) of every GEMM here.
    static let scaleFloat32: Int32 = 0

    /// `CUBLAS_STATUS_INVALID_VALUE = 7`, `CUBLAS_STATUS_ARCH_MISMATCH = 8`, `CUBLAS_STATUS_NOT_SUPPORTED = 15`
    /// (cublas_api.h): a configuration this library or device cannot run, answered by the unfused path.
    static let unsupportedStatuses: Set<Int32> = [7, 8, 15]

    /// `sizeof(cublasLtMatmulHeuristicResult_t)`: `cublasLtMatmulAlgo_t algo` (8 × uint64_t) at 0,
    /// `size_t workspaceSize` at 64, `cublasStatus_t state` at 72, `float wavesCount` at 76, `int reserved[4]`.
    static let heuristicResultBytes = 96
    static let algorithmBytes = 64
    static let heuristicStateOffset = 72
}
