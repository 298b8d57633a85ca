/// The bfloat16 grouped GEMMs of `GroupedGemmKernels` on Hopper's warpgroup MMA (`wgmma`, sm_90a):
/// the same three products, grid, group table, epilogues and arguments, so it replaces the
/// `mma.sync` kernel launch for launch on a compute capability 9.x device.
///
/// Why: `mma.sync` reaches about 250 TFLOP/s on an H200 against cuBLAS's 430–590 (its Hopper
/// kernels use `wgmma`), which keeps large experts on the per-expert cuBLAS lanes.
///
/// A block computes a 128×128 tile in two warpgroups of 64×128 (`wgmma.m64n128k16`, float32
/// accumulators in registers, 64 a thread). Both operands are read by the tensor cores straight from
/// shared memory through matrix descriptors, in the layout without swizzling: "core matrices" of
/// 8×8 values, each 128 contiguous bytes (8 rows of 16 bytes, a row along K for a K-contiguous
/// operand, along M or N for the other kind). A descriptor gives the byte distance between core
/// matrices adjacent along K (leading) and along M or N (stride); the transpose flag of the
/// instruction says which kind the operand is. Per stage and operand, 128 rows by 64 K values:
/// - K-contiguous: core matrix (r/8, k/8) at `((r/8)·8 + k/8)·128`: leading 128, stride 1024;
/// - M- or N-contiguous: core matrix (k/8, r/8) at `((k/8)·16 + r/8)·128`: leading 2048, stride 128.
/// Chunk `id` of a stage (16 bytes) is stored at `id·16`, and a warp's 32 chunks are four whole
/// core matrices, so the `cp.async` writes meet no bank conflict; the tensor cores read whole core
/// matrices.
///
/// Pipeline: three stages of 64 K values (96 KiB, two blocks an SM), filled by `cp.async` from all
/// 256 threads; before the tensor cores read a stage, every thread has waited for its copies and
/// fenced them from the generic to the async proxy (`fence.proxy.async`), then the block meets at a
/// barrier. A stage is refilled only after every warpgroup waited for the MMAs that read it.
enum GroupedGemmHopperKernels {
    /// Dynamic shared memory of one block: three stages of two 128×64 bfloat16 tiles.
    static let sharedMemoryBytes = 3 * 2 * 128 * 64 * 2

    static let source = #"""
    #if defined(FM_BF16)
    #define GH_BM 128
    #define GH_BN 128
    #define GH_BK 64
    #define GH_STAGES 3
    #define GH_TILE_BYTES (128 * GH_BK * 2)   // one operand's tile of a stage

    /// A shared-memory matrix descriptor without swizzling: start address, then the leading (along K)
    /// and stride (along M or N) byte distances between core matrices, each in 16-byte units.
    __device__ __forceinline__ uint64_t gh_descriptor(uint32_t address, uint32_t leading, uint32_t stride) {
        return (uint64_t)((address & 0x3FFFF) >> 4) | ((uint64_t)(leading >> 4) << 16) | ((uint64_t)(stride >> 4) << 32);
    }
    \#(wgmmaHelper)
    /// Chunk `id` of an operand's stage tile (16 bytes, stored at `id·16`), the operand's rows (M or
    /// N) `r0 ..< rEnd` from `base` with leading dimension `ld`: its source at K = 0 of the tile, whether
    /// its row (or column) exists, and its K position in the tile. K-contiguous (`KC`): row
    /// (id/64)·8 + id%8, K values ((id/8)%8)·8 ...+8. Otherwise: K row (id/128)·8 + id%8, values
    /// ((id/8)%16)·8 ...+8 along M or N.
    template <bool KC>
    __device__ __forceinline__ void gh_chunk(int id, const bf16_t* base, int64_t r0, int64_t rEnd, int64_t k0, int64_t ld,
                                             const bf16_t*& src, bool& ok, int& kPos) {
        if (KC) {
            const int row = (id >> 6) * 8 + (id & 7), kc = ((id >> 3) & 7) * 8;
            ok = r0 + row < rEnd; kPos = kc;
            src = ok ? base + (r0 + row) * ld + k0 + kc : base;
        } else {
            const int kr = (id >> 7) * 8 + (id & 7), rc = ((id >> 3) & 15) * 8;
            ok = r0 + rc < rEnd; kPos = kr;
            src = ok ? base + (k0 + kr) * ld + r0 + rc : base;
        }
    }
    /// Keeps the compiler from moving reads of an accumulator above the wait for the MMAs writing it.
    __device__ __forceinline__ void gh_fence_accumulator(float& r) { asm volatile("" : "+f"(r) :: "memory"); }

    template <bool A_K, bool B_K, bool VARY_K, int MODE, int ACT>
    __device__ __forceinline__ void grouped_gemm_wgmma(const bf16_t* __restrict__ a, const bf16_t* __restrict__ b, bf16_t* __restrict__ c,
                                                       const int* __restrict__ offsets, const int* __restrict__ tiles,
                                                       int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc,
                                                       int64_t bStride, int64_t cStride, const T* bias, T* aux) {
        extern __shared__ __align__(128) bf16_t gh_tiles[];
        GroupedTile t;
        if (!grouped_tile<VARY_K>(GH_BM, offsets, tiles, M, K, t)) return;
        if (VARY_K) c += t.g * cStride; else b += t.g * bStride;
        const int64_t m0 = t.m0, mEnd = t.mEnd, k0 = t.k0, kEnd = t.kEnd;
        const int64_t n0 = (int64_t)blockIdx.x * GH_BN;
        const int tid = threadIdx.x, lane = tid & 31, group = tid >> 7, warp = (tid >> 5) & 3;
        const uint32_t sA = gg_shared_address(gh_tiles), sB = sA + GH_STAGES * GH_TILE_BYTES;
        const int kTiles = (int)((kEnd - k0 + GH_BK - 1) / GH_BK);

        // Each thread copies four chunks of each operand per stage (`gh_chunk`); as in
        // `GroupedGemmKernels`, all but the K position is fixed for the loop and set up once.
        const bf16_t* srcA[4]; const bf16_t* srcB[4];
        int kPosA[4], kPosB[4];
        bool okA[4], okB[4];
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            gh_chunk<A_K>(tid + i * 256, a, m0, mEnd, k0, lda, srcA[i], okA[i], kPosA[i]);
            gh_chunk<B_K>(tid + i * 256, b, n0, N, k0, ldb, srcB[i], okB[i], kPosB[i]);
        }
        const int64_t stepA = A_K ? GH_BK : GH_BK * lda, stepB = B_K ? GH_BK : GH_BK * ldb;
        // Chunks at or past the end of K read zeros (only the last tile has any).
        auto load = [&](int stage, int kt) {
            const int kLeft = (int)(kEnd - k0) - kt * GH_BK;
            #pragma unroll
            for (int i = 0; i < 4; i++) {
                const uint32_t dst = stage * GH_TILE_BYTES + (tid + i * 256) * 16;
                const bool va = okA[i] && kPosA[i] < kLeft, vb = okB[i] && kPosB[i] < kLeft;
                gg_copy16(sA + dst, va ? srcA[i] + kt * stepA : a, va);
                gg_copy16(sB + dst, vb ? srcB[i] + kt * stepB : b, vb);
            }
        };

        // Descriptors of this warpgroup's 64 rows of A and all 128 columns of B for k = 0 of stage
        // 0; a stage adds GH_TILE_BYTES, each 16 of K two core matrices along K.
        const uint32_t leadA = A_K ? 128 : 2048, strideA = A_K ? 1024 : 128;
        const uint32_t leadB = B_K ? 128 : 2048, strideB = B_K ? 1024 : 128;
        const uint32_t rowsA = A_K ? group * 8 * 1024 : group * 8 * 128;   // 64 rows = 8 core matrices along M
        const uint64_t descA = gh_descriptor(sA + rowsA, leadA, strideA), descB = gh_descriptor(sB, leadB, strideB);
        // Moving 16 along K moves two core matrices along K; descriptors count in 16-byte units.
        const uint64_t kStepA = (2 * leadA) >> 4, kStepB = (2 * leadB) >> 4, stageStep = GH_TILE_BYTES >> 4;

        float acc[64];
        #pragma unroll
        for (int i = 0; i < 64; i++) acc[i] = 0.f;

        #pragma unroll
        for (int s = 0; s < GH_STAGES - 1; s++) {
            if (s < kTiles) load(s, s);
            asm volatile("cp.async.commit_group;\n" ::);
        }
        for (int kt = 0; kt < kTiles; kt++) {
            asm volatile("cp.async.wait_group %0;\n" :: "n"(GH_STAGES - 2));
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
            __syncthreads();
            // The stage read in the previous iteration is free: every warpgroup waited for its MMAs
            // before this barrier.
            const int next = kt + GH_STAGES - 1;
            if (next < kTiles) load(next % GH_STAGES, next);
            asm volatile("cp.async.commit_group;\n" ::);
            const uint64_t stage = (uint64_t)(kt % GH_STAGES) * stageStep;
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
            #pragma unroll
            for (int kk = 0; kk < GH_BK / 16; kk++)
                gh_wgmma<A_K ? 0 : 1, B_K ? 0 : 1>(acc, descA + stage + kk * kStepA, descB + stage + kk * kStepB);
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
            asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        }
        asm volatile("cp.async.wait_group 0;\n" ::);
        #pragma unroll
        for (int i = 0; i < 64; i++) gh_fence_accumulator(acc[i]);

        // acc[4j + 2h + e]: row 16·warp + lane/4 + 8h of the warpgroup's 64, column 8j + 2·(lane%4) + e.
        #pragma unroll
        for (int h = 0; h < 2; h++) {
            const int64_t row = m0 + group * 64 + warp * 16 + (lane >> 2) + h * 8;
            if (row >= mEnd) continue;
            #pragma unroll
            for (int j = 0; j < 16; j++) {
                const int64_t col = n0 + j * 8 + (lane & 3) * 2, at = row * ldc + col;
                if (col >= N) continue;
                float v[2] = {acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]};
                gg_epilogue<MODE, ACT, 2>(v, bias, aux, t.g, N, at, col);
                *(uint32_t*)(c + at) = (uint32_t)float_to_bf16(v[0]) | ((uint32_t)float_to_bf16(v[1]) << 16);
            }
        }
    }
    #define GH_ENTRY(NAME, AK, BK, VK, MODE, ACT) \
    extern "C" __global__ void __launch_bounds__(256, 2) NAME(const T* a, const T* b, T* c, const int* offsets, const int* tiles, \
        int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, int64_t bStride, int64_t cStride, \
        const T* bias, T* aux) { \
        grouped_gemm_wgmma<AK, BK, VK, MODE, ACT>(a, b, c, offsets, tiles, M, N, K, lda, ldb, ldc, bStride, cStride, bias, aux); }
    // The entries of `GroupedGemmKernels`, under the same names with `_wgmma` appended.
    GG_ENTRIES(GH_ENTRY, _wgmma)
    #endif
    """#

    /// `gh_wgmma<TA, TB>(acc, descA, descB)`: `acc += A·B` for one 64×128×16 step, both operands from
    /// shared memory, `TA`/`TB` 0 for a K-contiguous operand and 1 for the other kind. Written out
    /// here because the instruction names its 64 accumulator registers one by one.
    static var wgmmaHelper: String {
        let registers = (0..<64).map { "%\($0)" }.joined(separator: ", ")
        let outputs = (0..<64).map { "\"+f\"(d[\($0)])" }.joined(separator: ", ")
        return """
        template <int TA, int TB>
        __device__ __forceinline__ void gh_wgmma(float* d, uint64_t descA, uint64_t descB) {
            asm volatile("{\\n.reg .pred p;\\nsetp.ne.b32 p, %66, 0;\\n"
                         "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {\(registers)}, %64, %65, p, 1, 1, %67, %68;\\n}\\n"
                         : \(outputs)
                         : "l"(descA), "l"(descB), "r"(1), "n"(TA), "n"(TB));
        }
        """
    }
}
