/// How the CUDA backend runs the per-expert GEMMs of a grouped product (`MoEBackend.groupedMatmul`
/// and its weight gradient).
///
/// `.automatic` picks by the problems' shapes; the others pin one path, for tests that must cover
/// each and for `fastmoe bench moe-layer --grouped-gemm` to compare them.
public enum GroupedGemmStrategy: Int, Sendable, CaseIterable {
    /// The fastest path measured for the shapes: our kernel for small and mid-sized experts
    /// (``kernelPays(bfloat16:wgmma:meanRows:outWidth:inWidth:weightGradient:)``; in bfloat16 on Hopper its wgmma
    /// form), else `.lanes`.
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
    /// `.kernel` with its bfloat16 products on Hopper's warpgroup MMA (`GroupedGemmHopperKernels`)
    /// on a compute capability 9.x device; elsewhere exactly `.kernel`. (`.automatic` takes this
    /// form wherever it takes our kernel in bfloat16.)
    case wgmma

    /// The names `--grouped-gemm` takes.
    public var name: String {
        switch self {
        case .automatic: return "auto"
        case .grouped: return "grouped"
        case .serial: return "serial"
        case .lanes: return "lanes"
        case .kernel: return "kernel"
        case .wgmma: return "wgmma"
        }
    }

    public init?(name: String) {
        guard let match = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = match
    }

    /// The concrete path: never `.automatic`, and `.grouped` only when `groupedAvailable` (the loaded
    /// cuBLAS has it and there are ≥ 2 problems).
    ///
    /// `.automatic` resolves to `.lanes` here (our kernel takes over per product, by shape): on an
    /// H200 (cuBLAS 13.1, 2026-12-01, `fastmoe bench moe-layer --grouped-gemm …`) one GEMM per expert on four lanes beat the
    /// grouped call on every row of the table, by 45% fwd+bwd on Mixtral-like experts (each
    /// GEMM fills the GPU, and the grouped call runs Ampere-style MMA kernels at half the dense rate),
    /// 5% on E = 64 experts of 512 rows, 8% on fp32 E = 128 with 64 rows each.
    public func resolved(groupedAvailable: Bool) -> GroupedGemmStrategy {
        // `.automatic` may still take `.kernel` for one product, by its shape: `kernelPays`.
        switch self {
        case .grouped: return groupedAvailable ? .grouped : .serial
        case .serial, .lanes, .kernel, .wgmma: return self
        case .automatic: return .lanes
        }
    }

    /// Whether `.automatic` runs a grouped product on our kernel rather than the lanes: where one
    /// expert's GEMM (`2 · meanRows · outWidth · inWidth` FLOPs) is under `kernelFLOPLimit`. There
    /// the lanes are bound by the host (a cuBLAS launch, events and a plan lookup per expert cost
    /// more than the GEMM) and one launch for all experts wins; on larger experts cuBLAS's Hopper
    /// kernels win. H200, 2026-12-01, `fastmoe bench moe-layer`, fwd+bwd ms:
    /// - bfloat16, wgmma / lanes (docs/perf-notes.md, change 18), by GFLOP per expert: 0.27 (T=4096
    ///   D=256 H=512 E=8) 0.29 / 0.96; 2.15 (T=8192 D=512 H=1024 E=8, the medium preset's layer)
    ///   0.61 / 0.71, its training step 23.5 / 25.6; 2.95 (the fine E=64 K=2 row) 3.73 / 4.21; 5.9
    ///   (fine sizes, E=32 K=2) 3.31 / 2.91; 11.8 (E=16) 3.14 / 2.61: limit 4 GFLOP;
    /// - bfloat16 without wgmma (`mma.sync`, change 8): 0.27 GFLOP 0.73 → 0.49 ms, 2.1 GFLOP 0.73 →
    ///   0.77, 23.6 GFLOP 2.73 → 4.67: limit 2 GFLOP;
    /// - float32 (CUDA cores, change 8): 0.27 GFLOP 1.14 → 0.71, 0.54 (the paper's E=128) 15.2 →
    ///   15.1, 2.1 GFLOP 2.89 → 3.21: limit 1 GFLOP.
    ///
    /// Past the limit, float32's row-varying products (forward, data gradient) still take our
    /// kernel where an expert has at most `fewRows` rows: cuBLAS rounds each expert's rows up to its
    /// 128- or 256-row tiles (or splits K), our kernel to 64. The paper's E=32 (256 rows, 2.1 GFLOP
    /// an expert, perf-notes change 40), fwd+bwd: everything on the lanes 11.25–11.30 ms, on our
    /// kernel 11.40–11.51, the row-varying products on it and the weight gradients on the lanes
    /// 11.03–11.09, the reverse 11.70–11.75. With 512 rows the lanes won: the paper's sizes at E=16
    /// 9.61–9.67 against 10.62–10.66, the fine sizes in float32 at E=64 K=2 28.94–29.02 against
    /// 29.65–29.78; at E=8 (1024 rows) every mix (9.41–9.45 against 10.01–11.02).
    public static func kernelPays(bfloat16: Bool, wgmma: Bool = false, meanRows: Int, outWidth: Int, inWidth: Int,
                                  weightGradient: Bool = false) -> Bool {
        if 2 * Double(meanRows) * Double(outWidth) * Double(inWidth) < kernelFLOPLimit(bfloat16: bfloat16, wgmma: wgmma) { return true }
        return !bfloat16 && !weightGradient && meanRows <= fewRows
    }

    /// An expert's rows at or below which float32's row-varying products take our kernel whatever
    /// their FLOPs (`kernelPays`).
    public static let fewRows = 256

    /// One expert's GEMM FLOPs below which `.automatic` takes our kernel.
    public static func kernelFLOPLimit(bfloat16: Bool, wgmma: Bool = false) -> Double {
        bfloat16 ? (wgmma ? 4e9 : 2e9) : 1e9
    }
}
