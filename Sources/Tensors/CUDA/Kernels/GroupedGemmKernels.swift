/// The experts' grouped GEMMs in one launch each (`GroupedGemmStrategy.kernel`): every expert's tiles
/// in one grid, the per-expert row ranges read from device memory, so the number of launches does
/// not grow with the number of experts.
///
/// One problem per expert `g`, row-major `C = A·B` with `A(m, k)`, `B(k, n)` read through a leading
/// dimension, each operand either K-contiguous or not (template flags `A_K`, `B_K`):
/// - varying M (`VARY_K` false: the forward `x_g W_gᵀ` and the data gradient `gy_g W_g`): rows
///   `offsets[g] ..< offsets[g+1]` of `A` and `C`, `B_g = b + g·bStride`; `tiles[2t], tiles[2t+1]`
///   give the expert and first row of the grid's row tile `t = blockIdx.y` (expert -1: past the
///   last tile);
/// - varying K (`VARY_K` true: the weight gradient `gy_gᵀ x_g`): the sum runs over rows
///   `offsets[g] ..< offsets[g+1]` of both operands, `C_g = c + g·cStride`, and an expert without
///   rows gets zeros. `tiles` holds the work units of `grouped_weight_units` instead (`blockIdx.z`
///   = unit): an expert's rows, or a chunk of a crowded expert's, whose tiles write float32
///   partials to `work` for `grouped_weight_sum`.
/// Column tiles are the grid's fastest index, so the blocks resident at once share a few row tiles
/// of `A`, each read from memory once: with row tiles fastest, every column sweep re-read all of
/// `A` from DRAM (ncu, H200, the E = 8 forward: 44% of DRAM bandwidth, 58% L2 hits, L2-bound).
///
/// bfloat16: tensor cores through `mma.sync` m16n8k16 (float32 accumulation), 128×128×32 block tiles
/// in 8 warps of 64×32 (two blocks per SM), a three-stage `cp.async` pipeline and `ldmatrix` (transposed for an operand
/// that is not K-contiguous), rows padded by 16 bytes so `ldmatrix` meets no bank conflict.
/// float32: CUDA cores, 64×128×16 block tiles, 128 threads of 8×8 outputs, double-buffered shared memory.
/// Both need the dimensions read in 16-byte vectors to be multiples of 8 (bf16) or 4 (fp32)
/// (`CUDABackend.groupedKernelFits`).
enum GroupedGemmKernels {
    /// Shared with `GroupedGemmHopperKernels`: the block's problem, its epilogues, and (bfloat16)
    /// shared-memory addresses.
    static let common = #"""
    #if defined(FM_BF16) || defined(FM_F32)
    /// The problem of a row-varying product's row tile `y` (its expert, its rows [m0, mEnd), its sum
    /// over [k0, kEnd)); false for a tile past the last row tile.
    // `part`: a weight-gradient tile's float32 partial slot (`grouped_unit_tile`), -1 where the tile is written whole.
    struct GroupedTile { int g; int64_t m0, mEnd, k0, kEnd, part = -1; };
    __device__ __forceinline__ bool grouped_row_tile(int bm, int y, const int* offsets, const int* tiles, int64_t K, GroupedTile& t) {
        t.g = tiles[2 * y];
        if (t.g < 0) return false;
        t.m0 = tiles[2 * y + 1]; t.mEnd = offsets[t.g + 1]; t.k0 = 0; t.kEnd = K;
        return true;
    }
    /// The weight gradient's tile `tile` (of `columnTiles` by M / bm an expert) of work unit `unit`
    /// (`grouped_weight_units`: an expert, the rows it sums, and where a crowded expert was split,
    /// the first partial slot of the chunk): its problem and first column; false past the last unit.
    __device__ __forceinline__ bool grouped_unit_tile(const int* units, int64_t unit, int64_t tile, int64_t columnTiles, int bm, int bn,
                                                      int64_t M, GroupedTile& t, int64_t& n0) {
        const int* u = units + 4 * unit;
        if (u[0] < 0) return false;
        t.g = u[0]; t.m0 = (tile / columnTiles) * bm; t.mEnd = M; t.k0 = u[1]; t.kEnd = u[2];
        t.part = u[3] < 0 ? -1 : u[3] + tile;
        n0 = (tile % columnTiles) * bn;
        return true;
    }
    /// The tile of a one-block-a-tile launch (grid x: column tiles; y: row tiles, or for the
    /// weight gradient the output's row tiles; z: the weight gradient's units, given as `tiles`).
    template <bool VARY_K>
    __device__ __forceinline__ bool grouped_block_tile(int bm, int bn, const int* offsets, const int* tiles, int64_t M, int64_t K,
                                                       GroupedTile& t, int64_t& n0) {
        if (VARY_K) return grouped_unit_tile(tiles, blockIdx.z, (int64_t)blockIdx.y * gridDim.x + blockIdx.x, gridDim.x, bm, bn, M, t, n0);
        n0 = (int64_t)blockIdx.x * bn;
        return grouped_row_tile(bm, blockIdx.y, offsets, tiles, K, t);
    }

    /// The epilogue of a row-varying product (`GroupedEpilogue`), fixed at compile time so a plain
    /// product compiles as if there were none: `MODE` 0 none, 1 bias, 2 activation `ACT` (a
    /// `UnaryOp` code) after the bias, 3 the activation's backward; on `W` adjacent float32 results
    /// `v` at `at = row·ldc + col` of expert `g` (`bias` `[E, n]`, W-aligned like `c`). Mode 2 also
    /// writes the pre-activation to `aux[at...]`, mode 3 reads it there; both as one vector.
    /// Intermediates are rounded to T where the unfused primitives store them, so the fused result is
    /// theirs. (With the mode and activation read at run time, every result carried a switch over
    /// all activations: the kernels ran 30-45% slower on small experts and took seconds to compile.)
    template <int W> struct alignas(W * sizeof(T)) GGVector { T v[W]; };
    /// `gg_epilogue`'s arithmetic, its operands loaded: the bias `b` (where `hasBias`), the
    /// pre-activation `h` (read in mode 3, set in mode 2). `ROUNDED`: `v` already holds T values
    /// (the wgmma kernel's staged tile), so the product's rounding is left out: it would change nothing.
    template <int MODE, int ACT, int W, bool ROUNDED = false>
    __device__ __forceinline__ void gg_epilogue_math(float (&v)[W], const GGVector<W>& b, bool hasBias, GGVector<W>& h) {
        if (MODE == 0) return;
        if (MODE == 3) {
            #pragma unroll
            for (int e = 0; e < W; e++) v[e] = (ROUNDED ? v[e] : LD(ST(v[e]))) * unary_derivative(ACT, LD(h.v[e]));
            return;
        }
        #pragma unroll
        for (int e = 0; e < W; e++) {
            const acc_t p = ROUNDED ? v[e] : LD(ST(v[e]));
            const acc_t x = hasBias ? LD(ST(p + LD(b.v[e]))) : p;
            h.v[e] = ST(x);
            v[e] = MODE == 1 ? x : unary_value(ACT, x);
        }
    }
    template <int MODE, int ACT, int W>
    __device__ __forceinline__ void gg_epilogue(float (&v)[W], const T* bias, T* aux, int g, int64_t n, int64_t at, int64_t col) {
        if (MODE == 0) return;
        GGVector<W> b, h;
        if (MODE == 3) h = *(const GGVector<W>*)(aux + at);
        if (MODE != 3 && bias) b = *(const GGVector<W>*)(bias + g * n + col);
        gg_epilogue_math<MODE, ACT, W>(v, b, bias != nullptr, h);
        if (MODE == 2) *(GGVector<W>*)(aux + at) = h;
    }

    /// The entry points of one family of grouped kernels (`ENTRY(name, A_K, B_K, VARY_K, MODE,
    /// ACT)`): the forward x_g W_gᵀ (both operands K-contiguous) plain, with a bias, and with a bias
    /// and each activation an expert can have (ReLU 5, SiLU 7, GELU tanh 8, GELU erf 9); the data
    /// gradient gy_g W_g (B N-contiguous) plain and with each activation's backward; the weight
    /// gradient gy_gᵀ x_g (A M-contiguous, B N-contiguous, summed over the expert's rows), plain.
    /// `CUDABackend.KernelEpilogue.suffixes` lists the suffixes the host asks for.
    #define GG_ENTRIES(ENTRY, SUFFIX) \
    ENTRY(grouped_gemm_forward##SUFFIX, true, true, false, 0, 0) \
    ENTRY(grouped_gemm_forward_bias##SUFFIX, true, true, false, 1, 0) \
    ENTRY(grouped_gemm_forward_act5##SUFFIX, true, true, false, 2, 5) \
    ENTRY(grouped_gemm_forward_act7##SUFFIX, true, true, false, 2, 7) \
    ENTRY(grouped_gemm_forward_act8##SUFFIX, true, true, false, 2, 8) \
    ENTRY(grouped_gemm_forward_act9##SUFFIX, true, true, false, 2, 9) \
    ENTRY(grouped_gemm_data_gradient##SUFFIX, true, false, false, 0, 0) \
    ENTRY(grouped_gemm_data_gradient_dact5##SUFFIX, true, false, false, 3, 5) \
    ENTRY(grouped_gemm_data_gradient_dact7##SUFFIX, true, false, false, 3, 7) \
    ENTRY(grouped_gemm_data_gradient_dact8##SUFFIX, true, false, false, 3, 8) \
    ENTRY(grouped_gemm_data_gradient_dact9##SUFFIX, true, false, false, 3, 9) \
    ENTRY(grouped_gemm_weight_gradient##SUFFIX, false, false, true, 0, 0)

    /// The parameters of every grouped kernel, in the order `CUDABackend.enqueueGroupedKernel` passes
    /// them, and their names, to pass them on: the contract all three families share.
    #define GG_PARAMS const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ c, const int* __restrict__ offsets, \
        const int* __restrict__ tiles, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, \
        int64_t bStride, int64_t cStride, const T* bias, T* aux, float* __restrict__ work
    #define GG_ARGS a, b, c, offsets, tiles, M, N, K, lda, ldb, ldc, bStride, cStride, bias, aux, work
    #endif

    #if defined(FM_BF16)
    __device__ __forceinline__ uint32_t gg_shared_address(const void* p) {
        uint32_t r;
        asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
        return r;
    }
    #endif
    """#

    static let source = common + "\n" + kernels

    static let kernels = #"""
    #if defined(FM_BF16)
    #define GG_BM 128
    #define GG_BN 128
    #define GG_BK 32
    #define GG_STAGES 3
    #define GG_KSTRIDE (GG_BK + 8)     // a K-contiguous tile row: 32 values + 16 bytes of padding
    #define GG_MSTRIDE (GG_BM + 8)     // a tile row of 128 M (or N) values + padding
    #define GG_TILE 5120               // max(128 * GG_KSTRIDE, 32 * GG_MSTRIDE) values per operand and stage

    __device__ __forceinline__ void gg_copy16(uint32_t dst, const void* src, bool valid) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(dst), "l"(src), "r"(valid ? 16 : 0));
    }

    __device__ __forceinline__ void gg_ldsm(uint32_t addr, uint32_t* r) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
    }
    __device__ __forceinline__ void gg_ldsm_t(uint32_t addr, uint32_t* r) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
    }
    __device__ __forceinline__ void gg_mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }

    template <bool A_K, bool B_K, bool VARY_K, int MODE, int ACT>
    __device__ __forceinline__ void grouped_gemm_mma(GG_PARAMS) {
        extern __shared__ __align__(16) bf16_t gg_tiles_bf16[];
        GroupedTile t;
        int64_t n0;
        if (!grouped_block_tile<VARY_K>(GG_BM, GG_BN, offsets, tiles, M, K, t, n0)) return;
        if (VARY_K) c += t.g * cStride; else b += t.g * bStride;
        const int64_t m0 = t.m0, mEnd = t.mEnd, k0 = t.k0, kEnd = t.kEnd;
        const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
        const uint32_t sA = gg_shared_address(gg_tiles_bf16), sB = sA + GG_STAGES * GG_TILE * 2;
        const int kTiles = (int)((kEnd - k0 + GG_BK - 1) / GG_BK);

        // Each thread copies two 16-byte chunks of each operand per stage. Everything but the K
        // position is fixed for the whole loop, so the source pointers, their step per tile, the
        // chunks' offsets in a stage and whether their row (or column) exists are set up once: the
        // loop body is then mostly ldmatrix and mma (with the addressing inside it, the kernel was
        // bound by instruction issue at ~200 TFLOP/s).
        const bf16_t* srcA[2]; const bf16_t* srcB[2];
        uint32_t dstA[2], dstB[2];
        int kPosA[2], kPosB[2];
        bool okA[2], okB[2];
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            const int id = tid + i * 256;
            if (A_K) {
                const int row = id >> 2, kc = (id & 3) * 8;
                okA[i] = m0 + row < mEnd; kPosA[i] = kc; dstA[i] = (row * GG_KSTRIDE + kc) * 2;
                srcA[i] = okA[i] ? a + (m0 + row) * lda + k0 + kc : a;
            } else {
                const int kr = id >> 4, mc = (id & 15) * 8;
                okA[i] = m0 + mc < mEnd; kPosA[i] = kr; dstA[i] = (kr * GG_MSTRIDE + mc) * 2;
                srcA[i] = okA[i] ? a + (k0 + kr) * lda + m0 + mc : a;
            }
            if (B_K) {
                const int row = id >> 2, kc = (id & 3) * 8;
                okB[i] = n0 + row < N; kPosB[i] = kc; dstB[i] = (row * GG_KSTRIDE + kc) * 2;
                srcB[i] = okB[i] ? b + (n0 + row) * ldb + k0 + kc : b;
            } else {
                const int kr = id >> 4, nc = (id & 15) * 8;
                okB[i] = n0 + nc < N; kPosB[i] = kr; dstB[i] = (kr * GG_MSTRIDE + nc) * 2;
                srcB[i] = okB[i] ? b + (k0 + kr) * ldb + n0 + nc : b;
            }
        }
        const int64_t stepA = A_K ? GG_BK : GG_BK * lda, stepB = B_K ? GG_BK : GG_BK * ldb;
        // Chunks at or past the end of K read zeros (only the last tile has any).
        auto load = [&](int stage, int kt) {
            const int kLeft = (int)(kEnd - k0) - kt * GG_BK;
            #pragma unroll
            for (int i = 0; i < 2; i++) {
                const bool va = okA[i] && kPosA[i] < kLeft, vb = okB[i] && kPosB[i] < kLeft;
                gg_copy16(sA + stage * GG_TILE * 2 + dstA[i], va ? srcA[i] + kt * stepA : a, va);
                gg_copy16(sB + stage * GG_TILE * 2 + dstB[i], vb ? srcB[i] + kt * stepB : b, vb);
            }
        };

        // ldmatrix sources within a stage, in bytes: per 16-row block of A (mi) and 16-column pair of
        // n-fragments of B (np), for k = 0 of the tile (kk adds its own offset).
        uint32_t offA[4], offB[2];
        #pragma unroll
        for (int mi = 0; mi < 4; mi++) {
            const int r0 = wm * 64 + mi * 16;
            offA[mi] = A_K ? ((r0 + (lane & 15)) * GG_KSTRIDE + (lane >> 4) * 8) * 2
                           : (((lane & 7) + (lane >> 4) * 8) * GG_MSTRIDE + r0 + ((lane >> 3) & 1) * 8) * 2;
        }
        #pragma unroll
        for (int np = 0; np < 2; np++) {
            const int c0 = wn * 32 + np * 16;
            offB[np] = B_K ? ((c0 + (lane & 7) + (lane >> 4) * 8) * GG_KSTRIDE + ((lane >> 3) & 1) * 8) * 2
                           : (((lane & 7) + ((lane >> 3) & 1) * 8) * GG_MSTRIDE + c0 + (lane >> 4) * 8) * 2;
        }
        // Moving kk by 16 moves a K-contiguous tile 32 bytes along its row, the other kind 16 rows down.
        const uint32_t kkA = A_K ? 32 : 16 * GG_MSTRIDE * 2, kkB = B_K ? 32 : 16 * GG_MSTRIDE * 2;

        float acc[4][4][4];
        #pragma unroll
        for (int i = 0; i < 4; i++)
            #pragma unroll
            for (int j = 0; j < 4; j++)
                #pragma unroll
                for (int r = 0; r < 4; r++) acc[i][j][r] = 0.f;

        #pragma unroll
        for (int s = 0; s < GG_STAGES - 1; s++) {
            if (s < kTiles) load(s, s);
            asm volatile("cp.async.commit_group;\n" ::);
        }
        for (int kt = 0; kt < kTiles; kt++) {
            asm volatile("cp.async.wait_group %0;\n" :: "n"(GG_STAGES - 2));
            __syncthreads();
            // The stage computed in the previous iteration is free once every warp passed the barrier.
            const int next = kt + GG_STAGES - 1;
            if (next < kTiles) load(next % GG_STAGES, next);
            asm volatile("cp.async.commit_group;\n" ::);
            const uint32_t as = sA + (kt % GG_STAGES) * GG_TILE * 2, bs = sB + (kt % GG_STAGES) * GG_TILE * 2;
            #pragma unroll
            for (int kk = 0; kk < GG_BK / 16; kk++) {
                uint32_t af[4][4], bfr[2][4];
                #pragma unroll
                for (int mi = 0; mi < 4; mi++) {
                    if (A_K) gg_ldsm(as + offA[mi] + kk * kkA, af[mi]); else gg_ldsm_t(as + offA[mi] + kk * kkA, af[mi]);
                }
                #pragma unroll
                for (int np = 0; np < 2; np++) {
                    if (B_K) gg_ldsm(bs + offB[np] + kk * kkB, bfr[np]); else gg_ldsm_t(bs + offB[np] + kk * kkB, bfr[np]);
                }
                #pragma unroll
                for (int mi = 0; mi < 4; mi++)
                    #pragma unroll
                    for (int ni = 0; ni < 4; ni++)
                        gg_mma(acc[mi][ni], af[mi], bfr[ni >> 1][(ni & 1) * 2], bfr[ni >> 1][(ni & 1) * 2 + 1]);
            }
        }
        asm volatile("cp.async.wait_group 0;\n" ::);

        #pragma unroll
        for (int mi = 0; mi < 4; mi++) {
            #pragma unroll
            for (int half = 0; half < 2; half++) {
                const int64_t row = m0 + wm * 64 + mi * 16 + (lane >> 2) + half * 8;
                if (row >= mEnd) continue;
                #pragma unroll
                for (int ni = 0; ni < 4; ni++) {
                    const int64_t col = n0 + wn * 32 + ni * 8 + (lane & 3) * 2, at = row * ldc + col;
                    if (col >= N) continue;
                    float v[2] = {acc[mi][ni][half * 2], acc[mi][ni][half * 2 + 1]};
                    if (VARY_K && t.part >= 0) {
                        *(float2*)(work + t.part * (GG_BM * GG_BN) + (row - m0) * GG_BN + (col - n0)) = make_float2(v[0], v[1]);
                        continue;
                    }
                    gg_epilogue<MODE, ACT, 2>(v, bias, aux, t.g, N, at, col);
                    *(uint32_t*)(c + at) = (uint32_t)float_to_bf16(v[0]) | ((uint32_t)float_to_bf16(v[1]) << 16);
                }
            }
        }
    }
    #define GG_ENTRY(NAME, AK, BK, VK, MODE, ACT) \
    extern "C" __global__ void __launch_bounds__(256, 2) NAME(GG_PARAMS) { grouped_gemm_mma<AK, BK, VK, MODE, ACT>(GG_ARGS); }
    #endif

    #if defined(FM_F32)
    #define GS_BM 64
    #define GS_BN 128
    #define GS_BK 16

    /// Vector `id` (4 values) of an operand's tile of GS_BK K values by `R` rows (M or N) `r0 ..< rEnd`
    /// from `base` (leading dimension `ld`), at K offset `kb` (zeros past `kEnd` or the rows):
    /// K-contiguous (`KC`), row id/4 and K values (id%4)·4 ...+4; otherwise K row id/(R/4) and rows
    /// (id%(R/4))·4 ...+4.
    template <bool KC, int R>
    __device__ __forceinline__ float4 gs_fetch(int id, const float* base, int64_t r0, int64_t rEnd, int64_t kb, int64_t kEnd, int64_t ld) {
        const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
        if (KC) {
            const int row = id >> 2, kc = (id & 3) * 4;
            return r0 + row < rEnd && kb + kc < kEnd ? *(const float4*)(base + (r0 + row) * ld + kb + kc) : zero;
        }
        const int kr = (unsigned)id / (R / 4), rc = ((unsigned)id % (R / 4)) * 4;
        return kb + kr < kEnd && r0 + rc < rEnd ? *(const float4*)(base + (kb + kr) * ld + r0 + rc) : zero;
    }
    /// Stores what `gs_fetch` read for vector `id` into the stage tile `[GS_BK][R]` (K-major rows,
    /// so the compute loop reads 4 rows of one K as a float4; a K-contiguous vector is transposed).
    template <bool KC, int R>
    __device__ __forceinline__ void gs_store(int id, float4 v, float (*tile)[R]) {
        if (KC) {
            const int row = id >> 2, kc = (id & 3) * 4;
            tile[kc][row] = v.x; tile[kc + 1][row] = v.y; tile[kc + 2][row] = v.z; tile[kc + 3][row] = v.w;
        } else {
            *(float4*)&tile[(unsigned)id / (R / 4)][((unsigned)id % (R / 4)) * 4] = v;
        }
    }

    /// One stage's multiply-adds of a thread's 8×8 outputs (`grouped_gemm_simt`), for its first
    /// `ROWS` rows: 4 where its warp's upper rows lie past the tile's last row.
    template <int ROWS>
    __device__ __forceinline__ void gs_multiply(float (&acc)[8][8], const float (*As)[GS_BM], const float (*Bs)[GS_BN], int ty, int tx) {
        #pragma unroll
        for (int k = 0; k < GS_BK; k++) {
            const float4 a0 = *(const float4*)&As[k][ty * 4];
            const float4 a1 = ROWS == 8 ? *(const float4*)&As[k][32 + ty * 4] : a0;
            const float4 b0 = *(const float4*)&Bs[k][tx * 4], b1 = *(const float4*)&Bs[k][64 + tx * 4];
            const float ar[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float br[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
            #pragma unroll
            for (int i = 0; i < ROWS; i++)
                #pragma unroll
                for (int j = 0; j < 8; j++) acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
        }
    }

    template <bool A_K, bool B_K, bool VARY_K, int MODE, int ACT>
    __device__ __forceinline__ void grouped_gemm_simt(GG_PARAMS) {
        __shared__ __align__(16) float As[2][GS_BK][GS_BM];
        __shared__ __align__(16) float Bs[2][GS_BK][GS_BN];
        GroupedTile t;
        int64_t n0;
        if (!grouped_block_tile<VARY_K>(GS_BM, GS_BN, offsets, tiles, M, K, t, n0)) return;
        if (VARY_K) c += t.g * cStride; else b += t.g * bStride;
        const int64_t m0 = t.m0, mEnd = t.mEnd, k0 = t.k0, kEnd = t.kEnd;
        // 128 threads of 8×8 outputs: rows ty·4 + {0..3} and 32 + ty·4 + {0..3}, columns tx·4 + {0..3}
        // and 64 + tx·4 + {0..3}, so each k step reads four float4 of shared memory for 64 FMAs.
        const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
        const int kTiles = (int)((kEnd - k0 + GS_BK - 1) / GS_BK);
        // Warp w holds rows 8w ..< 8w + 8 and 32 + 8w ..< 32 + 8w + 8. In an expert's last row tile
        // some lie past its last row: their multiply-adds would be thrown away, so the warp skips
        // them and leaves its issue slots to the SM's other blocks (at E = 128 of the paper's rows,
        // experts of 64 ± 8 rows, about a third of the tiles are such remainders).
        const int64_t warpRow = m0 + 8 * (tid >> 5);
        const bool lowRows = warpRow < mEnd, highRows = warpRow + 32 < mEnd;
        // Per thread and tile: two float4 of A, four of B, held in registers while the previous tile computes.
        float4 ra[2], rb[4];
        auto fetch = [&](int kt) {
            const int64_t kb = k0 + (int64_t)kt * GS_BK;
            #pragma unroll
            for (int i = 0; i < 2; i++) ra[i] = gs_fetch<A_K, GS_BM>(tid + i * 128, a, m0, mEnd, kb, kEnd, lda);
            #pragma unroll
            for (int i = 0; i < 4; i++) rb[i] = gs_fetch<B_K, GS_BN>(tid + i * 128, b, n0, N, kb, kEnd, ldb);
        };
        auto store = [&](int s) {
            #pragma unroll
            for (int i = 0; i < 2; i++) gs_store<A_K, GS_BM>(tid + i * 128, ra[i], As[s]);
            #pragma unroll
            for (int i = 0; i < 4; i++) gs_store<B_K, GS_BN>(tid + i * 128, rb[i], Bs[s]);
        };

        float acc[8][8];
        #pragma unroll
        for (int i = 0; i < 8; i++)
            #pragma unroll
            for (int j = 0; j < 8; j++) acc[i][j] = 0.f;
        if (kTiles > 0) { fetch(0); store(0); }
        __syncthreads();
        for (int kt = 0; kt < kTiles; kt++) {
            const int s = kt & 1;
            if (kt + 1 < kTiles) fetch(kt + 1);
            if (highRows) gs_multiply<8>(acc, As[s], Bs[s], ty, tx);
            else if (lowRows) gs_multiply<4>(acc, As[s], Bs[s], ty, tx);
            // The other buffer was last read in the previous iteration, before this one's barrier.
            if (kt + 1 < kTiles) store(s ^ 1);
            __syncthreads();
        }
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            const int64_t row = m0 + (i >> 2) * 32 + ty * 4 + (i & 3);
            if (row >= mEnd) continue;
            #pragma unroll
            for (int h = 0; h < 2; h++) {
                const int64_t col = n0 + h * 64 + tx * 4, at = row * ldc + col;
                if (col >= N) continue;
                float v[4] = {acc[i][h * 4], acc[i][h * 4 + 1], acc[i][h * 4 + 2], acc[i][h * 4 + 3]};
                if (VARY_K && t.part >= 0) {
                    *(float4*)(work + t.part * (GS_BM * GS_BN) + (row - m0) * GS_BN + (col - n0)) = make_float4(v[0], v[1], v[2], v[3]);
                    continue;
                }
                gg_epilogue<MODE, ACT, 4>(v, bias, aux, t.g, N, at, col);
                *(float4*)(c + at) = make_float4(v[0], v[1], v[2], v[3]);
            }
        }
    }
    #define GG_ENTRY(NAME, AK, BK, VK, MODE, ACT) \
    extern "C" __global__ void __launch_bounds__(128) NAME(GG_PARAMS) { grouped_gemm_simt<AK, BK, VK, MODE, ACT>(GG_ARGS); }
    #endif

    #if defined(FM_BF16) || defined(FM_F32)
    GG_ENTRIES(GG_ENTRY, )

    /// The weight gradients of the experts `grouped_weight_units` split: each of their tiles is the
    /// sum of float32 partials (`tileRows × tileCols`, row-major), one a chunk of the expert's rows,
    /// added in chunk order and rounded once, so the result does not depend on which block ran
    /// first; with `inPlace` (float32 only) the first chunk's partial is the output's tile itself.
    /// Block (tile · parts + p, split) of 256 threads, four adjacent values a thread: part `p` of
    /// `parts = tileRows · tileCols / 1024` of the tile.
    extern "C" __global__ void __launch_bounds__(256) grouped_weight_sum(const float* __restrict__ work, const int* __restrict__ splits,
        T* __restrict__ c, int64_t M, int64_t N, int64_t ldc, int64_t cStride, int64_t columnTiles, int tileRows, int tileCols,
        int inPlace) {
        const int* split = splits + 3 * blockIdx.y;
        const int g = split[0];
        if (g < 0) return;
        const int64_t tileFloats = (int64_t)tileRows * tileCols, parts = tileFloats / 1024;
        const int64_t tile = blockIdx.x / parts, perUnit = gridDim.x / parts, first = split[1], chunks = split[2];
        const int64_t at = (blockIdx.x % parts) * 1024 + 4 * threadIdx.x;
        const int64_t row = (tile / columnTiles) * tileRows + at / tileCols, col = (tile % columnTiles) * tileCols + at % tileCols;
        if (row >= M || col >= N) return;
        GGVector<4>* out = (GGVector<4>*)(c + g * cStride + row * ldc + col);
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
        if (inPlace) {
            const GGVector<4> chunk0 = *out;
            sum = make_float4(LD(chunk0.v[0]), LD(chunk0.v[1]), LD(chunk0.v[2]), LD(chunk0.v[3]));
        }
        for (int64_t j = 0; j < chunks; j++) {
            const float4 p = *(const float4*)(work + (first + j * perUnit + tile) * tileFloats + at);
            sum.x += p.x; sum.y += p.y; sum.z += p.z; sum.w += p.w;
        }
        GGVector<4> result;
        result.v[0] = ST(sum.x); result.v[1] = ST(sum.y); result.v[2] = ST(sum.z); result.v[3] = ST(sum.w);
        *out = result;
    }
    #endif
    """#
}
