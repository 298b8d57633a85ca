/// How the CUDA backend runs the per-expert GEMMs of a grouped product (`MoEBackend.groupedMatmul`
/// and its weight gradient).
///
/// `.automatic` picks by the problems' shapes; the others pin one path, for tests that must cover
/// each and for `fastmoe bench moe-layer --grouped-gemm` to compare them.
public enum GroupedGemmStrategy: Int, Sendable, CaseIterable {
    /// The fastest path measured: `.lanes` (see ``resolved(_:groupedAvailable:)``).
    case automatic
    /// One `cublasGemmGroupedBatchedEx` call (cuBLAS ≥ 12.5), one group per distinct shape.
    case grouped
    /// One GEMM per expert, in turn on the device's stream: cuBLASLt with a plan per bucket of row
    /// counts (`LtVarying`), `cublasGemmEx` where cuBLASLt cannot run the problem.
    case serial
    /// The same GEMMs spread over the device's side streams (`GemmLanes`).
    case lanes
    /// One launch of our own kernel over every expert's tiles (`GroupedGemmKernels`: tensor cores in
    /// bfloat16, CUDA cores in float32), where the widths fit it; elsewhere `.lanes`.
    case kernel

    /// The names `--grouped-gemm` takes.
    public var name: String {
        switch self {
        case .automatic: return "auto"
        case .grouped: return "grouped"
        case .serial: return "serial"
        case .lanes: return "lanes"
        case .kernel: return "kernel"
        }
    }

    public init?(name: String) {
        guard let match = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = match
    }

    /// The concrete path: never `.automatic`, and `.grouped` only when `groupedAvailable` (the loaded
    /// cuBLAS has it and there are ≥ 2 problems).
    ///
    /// `.automatic` is `.lanes` for every shape: on an H200 (cuBLAS 13.1, 2026-12-01,
    /// `fastmoe bench moe-layer --grouped-gemm …`) one GEMM per expert on four lanes beat the
    /// grouped call on every row of the table, by 45% fwd+bwd on Mixtral-like experts (each
    /// GEMM fills the GPU, and the grouped call runs Ampere-style MMA kernels at half the dense rate),
    /// 5% on E = 64 experts of 512 rows, 8% on fp32 E = 128 with 64 rows each. Revisit with a
    /// grouped kernel of our own, or where experts get smaller than that.
    public func resolved(groupedAvailable: Bool) -> GroupedGemmStrategy {
        switch self {
        case .grouped: return groupedAvailable ? .grouped : .serial
        case .serial, .lanes, .kernel: return self
        case .automatic: return .lanes
        }
    }
}
