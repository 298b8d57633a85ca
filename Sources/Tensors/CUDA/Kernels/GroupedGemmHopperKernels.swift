/// The bfloat16 grouped GEMMs of `GroupedGemmKernels` on Hopper's warpgroup MMA (`wgmma`, sm_90a):
/// the same three products, grid, group table, epilogues and arguments, so it replaces the
/// `mma.sync` kernel launch for launch on a compute capability 9.x device.
///
/// Why: `mma.sync` reaches about 250 TFLOP/s on an H200 against cuBLAS's 430–590 (its Hopper
/// kernels use `wgmma`), which keeps large experts on the per-expert cuBLAS lanes.
///
/// A block computes a 128×128 tile in two warpgroups of 64×128 (`wgmma.m64n128k16`, float32
/// accumulators in registers, 64 a thread). Both operands are read by the tensor cores straight from
/// shared memory through matrix descriptors, in the 128-byte swizzled layout: rows of 128 bytes
/// whose 16-byte chunk `c` is stored at chunk `c ^ (row % 8)`, in 1024-byte-aligned groups of 8
/// rows, so the eight rows the tensor cores read together spread over all banks. (The layout
/// without swizzling, 8×8 core matrices of 128 contiguous bytes, ran at 110–122 TFLOP/s on an
/// H200.) A descriptor gives the start, the stride byte offset (between 8-row groups: 1024) and the
/// leading byte offset (M- or N-contiguous: between blocks of 64 values along M or N); the
/// transpose flag of the instruction says which kind the operand is. Per stage and operand, 128
/// rows (M or N) by 64 K values:
/// - K-contiguous: row `r` holds its 64 K values at `r·128`; 16 more of K start 32 bytes on;
/// - M- or N-contiguous: K row `k` of the 64 values of block `r/64` at `(r/64)·8192 + k·128`
///   (leading offset 8192); 16 more of K start 2048 bytes on.
/// The `cp.async` writes of 8 adjacent threads fill one row's 8 chunks: no bank conflict. The
/// finished tile is staged in the same shared memory (float32, 136 a row) and written out, epilogue
/// applied, as 16-byte vectors of 8 columns.
///
/// Pipeline: a ring of `stages` stages of 64 K values, filled by `cp.async` from all 256 threads,
/// `stages - 1 - mmasInFlight` K tiles ahead of the one computed; before the tensor cores read a
/// stage, every thread has waited for its copies and fenced them from the generic to the async
/// proxy (`fence.proxy.async`), then the block meets at a barrier. Each warpgroup leaves the MMAs of
/// `mmasInFlight` K tiles running while it goes on; a stage is refilled only after every warpgroup
/// waited for the MMAs that read it.
enum GroupedGemmHopperKernels {
    /// Stages of the shared-memory ring, and K tiles whose MMAs are left running while the next
    /// tile's are issued (a stage is refilled once its MMAs are done).
    static let stages = 3, mmasInFlight = 0
    /// Dynamic shared memory of one block: the stages' two 128×64 bfloat16 tiles each, and room to
    /// align them to the swizzle's 1024 bytes.
    static let sharedMemoryBytes = stages * 2 * 128 * 64 * 2 + 1024
    /// Blocks an SM holds at once (its 227 KiB of shared memory).
    static let blocksPerSM = max(1, min(2, 227 * 1024 / sharedMemoryBytes))

    static let source = #"""
    #if defined(FM_BF16)
    #define GH_BM 128
    #define GH_BN 128
    #define GH_BK 64
    #define GH_STAGES \#(stages)
    #define GH_IN_FLIGHT \#(mmasInFlight)
    #define GH_AHEAD (GH_STAGES - 1 - GH_IN_FLIGHT)   // K tiles loaded ahead of the one computed
    #define GH_TILE_BYTES (128 * GH_BK * 2)   // one operand's tile of a stage
    #define GH_CSTRIDE (GH_BN + 8)            // a staged float32 output row: 8 floats of padding against bank conflicts

    /// A shared-memory matrix descriptor for the 128-byte swizzle (layout type 1, bits 62-63): start
    /// address, then the leading and stride byte distances, each in 16-byte units.
    __device__ __forceinline__ uint64_t gh_descriptor(uint32_t address, uint32_t leading, uint32_t stride) {
        return (uint64_t)((address & 0x3FFFF) >> 4) | ((uint64_t)(leading >> 4) << 16) | ((uint64_t)(stride >> 4) << 32) | (1ull << 62);
    }
    \#(wgmmaHelper)
    /// Chunk `id` of an operand's stage tile (16 bytes), the operand's rows (M or N) `r0 ..< rEnd` from
    /// `base` with leading dimension `ld`: its source at K = 0 of the tile, whether its row (or
    /// column) exists, its K position in the tile, and its swizzled place in the tile. K-contiguous
    /// (`KC`): row id/8, K values (id%8)·8 ...+8. Otherwise: K row id/16, values (id%16)·8 ...+8
    /// along M or N.
    template <bool KC>
    __device__ __forceinline__ void gh_chunk(int id, const bf16_t* base, int64_t r0, int64_t rEnd, int64_t k0, int64_t ld,
                                             const bf16_t*& src, bool& ok, int& kPos, uint32_t& dst) {
        if (KC) {
            const int row = id >> 3, c = id & 7;
            ok = r0 + row < rEnd; kPos = c * 8; dst = row * 128 + ((c ^ (row & 7)) << 4);
            src = ok ? base + (r0 + row) * ld + k0 + c * 8 : base;
        } else {
            const int kr = id >> 4, c = id & 15;
            ok = r0 + c * 8 < rEnd; kPos = kr; dst = (c >> 3) * 8192 + kr * 128 + (((c & 7) ^ (kr & 7)) << 4);
            src = ok ? base + (k0 + kr) * ld + r0 + c * 8 : base;
        }
    }
    /// Keeps the compiler from moving reads of an accumulator above the wait for the MMAs writing it.
    __device__ __forceinline__ void gh_fence_accumulator(float& r) { asm volatile("" : "+f"(r) :: "memory"); }

    template <bool A_K, bool B_K, bool VARY_K, int MODE, int ACT>
    __device__ __forceinline__ void grouped_gemm_wgmma(GG_PARAMS) {
        extern __shared__ __align__(1024) bf16_t gh_tiles[];
        GroupedTile t;
        if (!grouped_tile<VARY_K>(GH_BM, offsets, tiles, M, K, t)) return;
        if (VARY_K) c += t.g * cStride; else b += t.g * bStride;
        const int64_t m0 = t.m0, mEnd = t.mEnd, k0 = t.k0, kEnd = t.kEnd;
        const int64_t n0 = (int64_t)blockIdx.x * GH_BN;
        const int tid = threadIdx.x, lane = tid & 31, group = tid >> 7, warp = (tid >> 5) & 3;
        // The swizzle repeats every 1024 bytes of address: the tiles start on such a boundary.
        const uint32_t sA = (gg_shared_address(gh_tiles) + 1023) & ~1023u, sB = sA + GH_STAGES * GH_TILE_BYTES;
        const int kTiles = (int)((kEnd - k0 + GH_BK - 1) / GH_BK);

        // Each thread copies four chunks of each operand per stage (`gh_chunk`); as in
        // `GroupedGemmKernels`, all but the K position is fixed for the loop and set up once.
        const bf16_t* srcA[4]; const bf16_t* srcB[4];
        int kPosA[4], kPosB[4];
        bool okA[4], okB[4];
        uint32_t dstA[4], dstB[4];
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            gh_chunk<A_K>(tid + i * 256, a, m0, mEnd, k0, lda, srcA[i], okA[i], kPosA[i], dstA[i]);
            gh_chunk<B_K>(tid + i * 256, b, n0, N, k0, ldb, srcB[i], okB[i], kPosB[i], dstB[i]);
        }
        const int64_t stepA = A_K ? GH_BK : GH_BK * lda, stepB = B_K ? GH_BK : GH_BK * ldb;
        // Chunks at or past the end of K read zeros (only the last tile has any).
        auto load = [&](int stage, int kt) {
            const int kLeft = (int)(kEnd - k0) - kt * GH_BK;
            #pragma unroll
            for (int i = 0; i < 4; i++) {
                const bool va = okA[i] && kPosA[i] < kLeft, vb = okB[i] && kPosB[i] < kLeft;
                gg_copy16(sA + stage * GH_TILE_BYTES + dstA[i], va ? srcA[i] + kt * stepA : a, va);
                gg_copy16(sB + stage * GH_TILE_BYTES + dstB[i], vb ? srcB[i] + kt * stepB : b, vb);
            }
        };

        // Descriptors of this warpgroup's 64 rows of A and all 128 columns of B for k = 0 of stage
        // 0; a stage adds GH_TILE_BYTES. The leading offset matters only to an M- or N-contiguous
        // operand (K-contiguous: 16, unused).
        const uint32_t leadA = A_K ? 16 : 8192, leadB = B_K ? 16 : 8192;
        const uint32_t rowsA = A_K ? group * 64 * 128 : group * 8192;   // this warpgroup's 64 rows of M
        const uint64_t descA = gh_descriptor(sA + rowsA, leadA, 1024), descB = gh_descriptor(sB, leadB, 1024);
        // 16 more of K: 32 bytes along a K-contiguous row, two 8-row groups down the other kind
        // (descriptors count in 16-byte units).
        const uint64_t kStepA = A_K ? 2 : 128, kStepB = B_K ? 2 : 128, stageStep = GH_TILE_BYTES >> 4;

        float acc[64];
        #pragma unroll
        for (int i = 0; i < 64; i++) acc[i] = 0.f;
        // The weight gradient with `aux` (`[E, M]`): the blocks of the first column tile also sum A
        // over K (the experts' bias gradient, Σ over their rows of gy), from the stage tiles the MMAs
        // read, while those run. Warpgroup 0 does it: thread (c, kg) adds the 8 M values of chunk c
        // at K rows kg, kg + 8, ... of each stage, where A's swizzle (M-contiguous) is fixed.
        const bool sumsA = VARY_K && !A_K && aux != nullptr && blockIdx.x == 0 && tid < 128;
        const int sc = tid & 15, skg = tid >> 4;
        float colSum[8];
        #pragma unroll
        for (int e = 0; e < 8; e++) colSum[e] = 0.f;
        const char* tileBytes = (const char*)gh_tiles + (sA - gg_shared_address(gh_tiles));

        #pragma unroll
        for (int s = 0; s < GH_AHEAD; s++) {
            if (s < kTiles) load(s, s);
            asm volatile("cp.async.commit_group;\n" ::);
        }
        for (int kt = 0; kt < kTiles; kt++) {
            asm volatile("cp.async.wait_group %0;\n" :: "n"(GH_AHEAD - 1));
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
            __syncthreads();
            // The stage of tile kt - 1 - GH_IN_FLIGHT is free: every warpgroup waited for its MMAs
            // (wait_group GH_IN_FLIGHT) before this barrier.
            const int next = kt + GH_AHEAD;
            if (next < kTiles) load(next % GH_STAGES, next);
            asm volatile("cp.async.commit_group;\n" ::);
            const uint64_t stage = (uint64_t)(kt % GH_STAGES) * stageStep;
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
            #pragma unroll
            for (int kk = 0; kk < GH_BK / 16; kk++)
                gh_wgmma<A_K ? 0 : 1, B_K ? 0 : 1>(acc, descA + stage + kk * kStepA, descB + stage + kk * kStepB);
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
            if (sumsA) {
                const char* chunk = tileBytes + (kt % GH_STAGES) * GH_TILE_BYTES + (sc >> 3) * 8192 + (((sc & 7) ^ skg) << 4);
                #pragma unroll
                for (int j = 0; j < GH_BK / 8; j++) {
                    const GGVector<8> v = *(const GGVector<8>*)(chunk + (skg + 8 * j) * 128);
                    #pragma unroll
                    for (int e = 0; e < 8; e++) colSum[e] += LD(v.v[e]);
                }
            }
            asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(GH_IN_FLIGHT) : "memory");
        }
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        asm volatile("cp.async.wait_group 0;\n" ::);
        #pragma unroll
        for (int i = 0; i < 64; i++) gh_fence_accumulator(acc[i]);

        // The tile goes through shared memory (free now: every copy landed, every MMA is done once
        // all warps pass the barrier) so that each thread then finishes 8 adjacent columns of a row:
        // the epilogue reads the bias and pre-activation and writes C as 16-byte vectors, a warp two
        // whole rows. (Straight from the accumulators a warp wrote 16 bytes of each of 8 rows.)
        // acc[4j + 2h + e]: row 16·warp + lane/4 + 8h of the warpgroup's 64, column 8j + 2·(lane%4) + e.
        __syncthreads();
        float* staged = (float*)((char*)gh_tiles + (sA - gg_shared_address(gh_tiles)));
        #pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = group * 64 + warp * 16 + (lane >> 2) + h * 8;
            #pragma unroll
            for (int j = 0; j < 16; j++)
                *(float2*)&staged[r * GH_CSTRIDE + j * 8 + (lane & 3) * 2] = make_float2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
        }
        // The column sums' partials, [8 kg][128 M], past the staged tile (the stages leave room).
        static_assert((GH_BM * GH_CSTRIDE + 8 * GH_BM) * 4 <= GH_STAGES * 2 * GH_TILE_BYTES, "the partials must fit in the stages");
        float* partial = staged + GH_BM * GH_CSTRIDE;
        if (sumsA) {
            #pragma unroll
            for (int e = 0; e < 8; e++) partial[skg * GH_BM + sc * 8 + e] = colSum[e];
        }
        __syncthreads();
        if (sumsA) {
            float sum = 0.f;
            #pragma unroll
            for (int kg = 0; kg < 8; kg++) sum += partial[kg * GH_BM + tid];
            if (m0 + tid < mEnd) aux[(int64_t)t.g * M + m0 + tid] = ST(sum);
        }
        #pragma unroll
        for (int i = 0; i < GH_BM * GH_BN / 8 / 256; i++) {
            const int id = tid + i * 256, r = id / (GH_BN / 8), c8 = (id % (GH_BN / 8)) * 8;
            const int64_t row = m0 + r, col = n0 + c8, at = row * ldc + col;
            if (row >= mEnd || col >= N) continue;
            const float4 lo = *(const float4*)&staged[r * GH_CSTRIDE + c8], hi = *(const float4*)&staged[r * GH_CSTRIDE + c8 + 4];
            float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
            gg_epilogue<MODE, ACT, 8>(v, bias, aux, t.g, N, at, col);
            GGVector<8> out;
            #pragma unroll
            for (int e = 0; e < 8; e++) out.v[e] = float_to_bf16(v[e]);
            *(GGVector<8>*)(c + at) = out;
        }
    }
    #define GH_ENTRY(NAME, AK, BK, VK, MODE, ACT) \
    extern "C" __global__ void __launch_bounds__(256, \#(blocksPerSM)) NAME(GG_PARAMS) { grouped_gemm_wgmma<AK, BK, VK, MODE, ACT>(GG_ARGS); }
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
