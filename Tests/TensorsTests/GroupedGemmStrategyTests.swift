import Testing
@testable import CUDA
@testable import Tensors

/// The choice of how the experts' GEMMs run, and the bucketing that lets one cuBLASLt plan serve
/// every row count of a bucket: rules checked without a GPU.
@Suite("Grouped GEMM strategy and cuBLASLt buckets")
struct GroupedGemmStrategyTests {
    @Test func namesRoundTripAndUnknownNamesAreRefused() {
        for strategy in GroupedGemmStrategy.allCases {
            #expect(GroupedGemmStrategy(name: strategy.name) == strategy)
        }
        #expect(GroupedGemmStrategy(name: "cutlass") == nil)
    }

    @Test func automaticIsLanesAndGroupedNeedsTheLibraryCall() {
        #expect(GroupedGemmStrategy.automatic.resolved(groupedAvailable: true) == .lanes)
        #expect(GroupedGemmStrategy.grouped.resolved(groupedAvailable: true) == .grouped)
        #expect(GroupedGemmStrategy.grouped.resolved(groupedAvailable: false) == .serial)
        #expect(GroupedGemmStrategy.serial.resolved(groupedAvailable: true) == .serial)
        #expect(GroupedGemmStrategy.kernel.resolved(groupedAvailable: false) == .kernel)
    }

    /// `.automatic` takes our kernel for the small experts where it won on the H200 (the small
    /// training preset's layer: 1024 rows, 256 × 512, in both dtypes) and the lanes for the large
    /// ones (the fine-grained bench's E = 8: 4096 rows, 2048 × 1408; fp32 2048 rows, 512 × 1024); its
    /// wgmma form up to mid-sized ones.
    @Test func automaticTakesTheKernelOnlyForSmallExperts() {
        for bf16 in [true, false] {
            #expect(GroupedGemmStrategy.kernelPays(bfloat16: bf16, meanRows: 1024, outWidth: 512, inWidth: 256))
            #expect(!GroupedGemmStrategy.kernelPays(bfloat16: bf16, meanRows: 4096, outWidth: 1408, inWidth: 2048))
        }
        #expect(!GroupedGemmStrategy.kernelPays(bfloat16: false, meanRows: 2048, outWidth: 1024, inWidth: 512))
        // With wgmma also the fine E = 64 K = 2 row (512 rows) and the medium preset's experts (2048
        // rows, 1024 × 512), not 1024 rows of 1408 × 2048, where the lanes won.
        #expect(GroupedGemmStrategy.kernelPays(bfloat16: true, wgmma: true, meanRows: 512, outWidth: 1408, inWidth: 2048))
        #expect(!GroupedGemmStrategy.kernelPays(bfloat16: true, meanRows: 512, outWidth: 1408, inWidth: 2048))
        #expect(GroupedGemmStrategy.kernelPays(bfloat16: true, wgmma: true, meanRows: 2048, outWidth: 1024, inWidth: 512))
        #expect(!GroupedGemmStrategy.kernelPays(bfloat16: true, wgmma: true, meanRows: 1024, outWidth: 1408, inWidth: 2048))
    }

    /// Float32 experts of few rows past the FLOP limit (the paper's E = 32: 256 rows, 4096 × 1024):
    /// the row-varying products on our kernel, the weight gradient on the lanes; with 512 rows (E =
    /// 16, and the fine sizes' E = 64 K = 2) everything on the lanes, and bfloat16 goes by its FLOP
    /// limit alone.
    @Test func float32ExpertsOfFewRowsTakeTheKernelForTheirRowVaryingProducts() {
        #expect(GroupedGemmStrategy.kernelPays(bfloat16: false, meanRows: 256, outWidth: 4096, inWidth: 1024))
        #expect(!GroupedGemmStrategy.kernelPays(bfloat16: false, meanRows: 256, outWidth: 4096, inWidth: 1024, weightGradient: true))
        #expect(!GroupedGemmStrategy.kernelPays(bfloat16: false, meanRows: 512, outWidth: 4096, inWidth: 1024))
        #expect(!GroupedGemmStrategy.kernelPays(bfloat16: false, meanRows: 512, outWidth: 1408, inWidth: 2048))
        #expect(!GroupedGemmStrategy.kernelPays(bfloat16: true, meanRows: 256, outWidth: 4096, inWidth: 1024))
        // Under the FLOP limit every product takes the kernel (the paper's E = 128: 64 rows).
        #expect(GroupedGemmStrategy.kernelPays(bfloat16: false, meanRows: 64, outWidth: 4096, inWidth: 1024, weightGradient: true))
    }

    @Test func bucketsAreTheNextPowerOfTwo() {
        let expected = [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (511, 512), (512, 512), (513, 1024), (16385, 32768)]
        for (size, bucket) in expected {
            #expect(CUBLASLt.bucket(size) == bucket, "size \(size)")
        }
    }

    /// The experts' three GEMMs (forward, data gradient, weight gradient), as the row-major calls of
    /// `CUDARouting` make them and the column-major problems cuBLASLt sees: bucketing the varying size
    /// changes only column counts, so every stored matrix still fits its leading dimension.
    @Test func bucketedExpertProblemsKeepValidLayouts() {
        let rows = 300, inWidth = 1408, outWidth = 2048
        // (transA, transB, m, n, k, lda, ldb, ldc) column-major, with the varying size bucketed.
        let problems: [(Int32, Int32, Int, Int, Int, Int, Int, Int)] = [
            (1, 0, outWidth, CUBLASLt.bucket(rows), inWidth, inWidth, inWidth, outWidth),   // forward: n = rows
            (0, 0, inWidth, CUBLASLt.bucket(rows), outWidth, inWidth, outWidth, inWidth),   // data gradient: n = rows
            (0, 1, inWidth, outWidth, CUBLASLt.bucket(rows), inWidth, outWidth, inWidth),   // weight gradient: k = rows
        ]
        for (transA, transB, m, n, k, lda, ldb, ldc) in problems {
            let key = CUBLASLt.PlanKey(transA: transA, transB: transB, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc,
                                       types: [0, 0, 0], compute: 68, epilogue: LtEpilogue.none.rawValue, auxLd: 0, alignments: [])
            #expect(CUBLASLt.layoutShapes(key).allSatisfy { $0.rows <= $0.ld }, "\(key)")
        }
    }
}
