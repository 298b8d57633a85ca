/// The experts' grouped GEMMs in one launch each (`GroupedGemmStrategy.kernel`): every expert's tiles
/// in one grid, the per-expert row ranges read from device memory, so the number of launches does
/// not grow with the number of experts.
///
/// One problem per expert `g`, row-major `C = A·B` with `A(m, k)`, `B(k, n)` read through a leading
/// dimension, each operand either K-contiguous or not (template flags `A_K`, `B_K`):
/// - varying M (`VARY_K` false: the forward `x_g W_gᵀ` and the data gradient `gy_g W_g`): rows
///   `offsets[g] ..< offsets[g+1]` of `A` and `C`, `B_g = b + g·bStride`; `tiles[2t], tiles[2t+1]`
///   give the expert and first row of the grid's row tile `t` (expert -1: past the last tile);
/// - varying K (`VARY_K` true: the weight gradient `gy_gᵀ x_g`): the sum runs over rows
///   `offsets[g] ..< offsets[g+1]` of both operands, `C_g = c + g·cStride` (`blockIdx.z` = g), and an
///   expert without rows gets zeros.
///
/// bfloat16: tensor cores through `mma.sync` m16n8k16 (float32 accumulation), 128×128×32 block tiles
/// in 8 warps of 64×32, a three-stage `cp.async` pipeline and `ldmatrix` (transposed for an operand
/// that is not K-contiguous), rows padded by 16 bytes so `ldmatrix` meets no bank conflict.
/// float32: CUDA cores, 64×128×16 block tiles, 4×8 outputs per thread, double-buffered shared memory.
/// Both need the dimensions read in 16-byte vectors to be multiples of 8 (bf16) or 4 (fp32)
/// (`CUDABackend.groupedKernelFits`).
enum GroupedGemmKernels {
    static let source = #"""
    #if defined(FM_BF16)
    #define GG_BM 128
    #define GG_BN 128
    #define GG_BK 32
    #define GG_STAGES 3
    #define GG_KSTRIDE (GG_BK + 8)     // a K-contiguous tile row: 32 values + 16 bytes of padding
    #define GG_MSTRIDE (GG_BM + 8)     // a tile row of 128 M (or N) values + padding
    #define GG_TILE 5120               // max(128 * GG_KSTRIDE, 32 * GG_MSTRIDE) values per operand and stage

    __device__ __forceinline__ uint32_t gg_shared_address(const void* p) {
        uint32_t r;
        asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
        return r;
    }
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

    template <bool A_K, bool B_K, bool VARY_K>
    __device__ __forceinline__ void grouped_gemm_mma(const bf16_t* __restrict__ a, const bf16_t* __restrict__ b, bf16_t* __restrict__ c,
                                                     const int* __restrict__ offsets, const int* __restrict__ tiles,
                                                     int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc,
                                                     int64_t bStride, int64_t cStride) {
        extern __shared__ __align__(16) bf16_t gg_tiles_bf16[];
        int g; int64_t m0, mEnd, k0, kEnd;
        if (VARY_K) {
            g = blockIdx.z; m0 = (int64_t)blockIdx.x * GG_BM; mEnd = M; k0 = offsets[g]; kEnd = offsets[g + 1];
            c += g * cStride;
        } else {
            g = tiles[2 * blockIdx.x];
            if (g < 0) return;
            m0 = tiles[2 * blockIdx.x + 1]; mEnd = offsets[g + 1]; k0 = 0; kEnd = K;
            b += g * bStride;
        }
        const int64_t n0 = (int64_t)blockIdx.y * GG_BN;
        const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
        bf16_t* As = gg_tiles_bf16;
        bf16_t* Bs = gg_tiles_bf16 + GG_STAGES * GG_TILE;
        const int kTiles = (int)((kEnd - k0 + GG_BK - 1) / GG_BK);

        // Two 16-byte chunks of each operand per thread and stage; chunks past the problem read zeros.
        auto load = [&](int stage, int kt) {
            const int64_t kb = k0 + (int64_t)kt * GG_BK;
            #pragma unroll
            for (int i = 0; i < 2; i++) {
                const int id = tid + i * 256;
                if (A_K) {
                    const int row = id >> 2, kc = (id & 3) * 8;
                    const bool ok = m0 + row < mEnd && kb + kc < kEnd;
                    gg_copy16(gg_shared_address(As + stage * GG_TILE + row * GG_KSTRIDE + kc), ok ? a + (m0 + row) * lda + kb + kc : a, ok);
                } else {
                    const int kr = id >> 4, mc = (id & 15) * 8;
                    const bool ok = kb + kr < kEnd && m0 + mc < mEnd;
                    gg_copy16(gg_shared_address(As + stage * GG_TILE + kr * GG_MSTRIDE + mc), ok ? a + (kb + kr) * lda + m0 + mc : a, ok);
                }
                if (B_K) {
                    const int row = id >> 2, kc = (id & 3) * 8;
                    const bool ok = n0 + row < N && kb + kc < kEnd;
                    gg_copy16(gg_shared_address(Bs + stage * GG_TILE + row * GG_KSTRIDE + kc), ok ? b + (n0 + row) * ldb + kb + kc : b, ok);
                } else {
                    const int kr = id >> 4, nc = (id & 15) * 8;
                    const bool ok = kb + kr < kEnd && n0 + nc < N;
                    gg_copy16(gg_shared_address(Bs + stage * GG_TILE + kr * GG_MSTRIDE + nc), ok ? b + (kb + kr) * ldb + n0 + nc : b, ok);
                }
            }
        };

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
            const bf16_t* as = As + (kt % GG_STAGES) * GG_TILE;
            const bf16_t* bs = Bs + (kt % GG_STAGES) * GG_TILE;
            #pragma unroll
            for (int kk = 0; kk < GG_BK; kk += 16) {
                uint32_t af[4][4], bfr[2][4];
                #pragma unroll
                for (int mi = 0; mi < 4; mi++) {
                    const int r0 = wm * 64 + mi * 16;
                    if (A_K) gg_ldsm(gg_shared_address(as + (r0 + (lane & 15)) * GG_KSTRIDE + kk + (lane >> 4) * 8), af[mi]);
                    else gg_ldsm_t(gg_shared_address(as + (kk + (lane & 7) + (lane >> 4) * 8) * GG_MSTRIDE + r0 + ((lane >> 3) & 1) * 8), af[mi]);
                }
                #pragma unroll
                for (int np = 0; np < 2; np++) {
                    const int c0 = wn * 32 + np * 16;
                    if (B_K) gg_ldsm(gg_shared_address(bs + (c0 + (lane & 7) + (lane >> 4) * 8) * GG_KSTRIDE + kk + ((lane >> 3) & 1) * 8), bfr[np]);
                    else gg_ldsm_t(gg_shared_address(bs + (kk + (lane & 7) + ((lane >> 3) & 1) * 8) * GG_MSTRIDE + c0 + (lane >> 4) * 8), bfr[np]);
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
                    const int64_t col = n0 + wn * 32 + ni * 8 + (lane & 3) * 2;
                    if (col >= N) continue;
                    const uint32_t lo = float_to_bf16(acc[mi][ni][half * 2]), hi = float_to_bf16(acc[mi][ni][half * 2 + 1]);
                    *(uint32_t*)(c + row * ldc + col) = lo | (hi << 16);
                }
            }
        }
    }
    #define GG_ENTRY(NAME, AK, BK, VK) \
    extern "C" __global__ void __launch_bounds__(256) NAME(const T* a, const T* b, T* c, const int* offsets, const int* tiles, \
        int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, int64_t bStride, int64_t cStride) { \
        grouped_gemm_mma<AK, BK, VK>(a, b, c, offsets, tiles, M, N, K, lda, ldb, ldc, bStride, cStride); }
    #endif

    #if defined(FM_F32)
    #define GS_BM 64
    #define GS_BN 128
    #define GS_BK 16

    template <bool A_K, bool B_K, bool VARY_K>
    __device__ __forceinline__ void grouped_gemm_simt(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                                                      const int* __restrict__ offsets, const int* __restrict__ tiles,
                                                      int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc,
                                                      int64_t bStride, int64_t cStride) {
        __shared__ __align__(16) float As[2][GS_BK][GS_BM];
        __shared__ __align__(16) float Bs[2][GS_BK][GS_BN];
        int g; int64_t m0, mEnd, k0, kEnd;
        if (VARY_K) {
            g = blockIdx.z; m0 = (int64_t)blockIdx.x * GS_BM; mEnd = M; k0 = offsets[g]; kEnd = offsets[g + 1];
            c += g * cStride;
        } else {
            g = tiles[2 * blockIdx.x];
            if (g < 0) return;
            m0 = tiles[2 * blockIdx.x + 1]; mEnd = offsets[g + 1]; k0 = 0; kEnd = K;
            b += g * bStride;
        }
        const int64_t n0 = (int64_t)blockIdx.y * GS_BN;
        const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
        const int kTiles = (int)((kEnd - k0 + GS_BK - 1) / GS_BK);
        const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);

        // Per thread and tile: one float4 of A, two of B, held in registers while the previous tile computes.
        float4 ra, rb[2];
        auto fetch = [&](int kt) {
            const int64_t kb = k0 + (int64_t)kt * GS_BK;
            if (A_K) {
                const int row = tid >> 2, kc = (tid & 3) * 4;
                ra = m0 + row < mEnd && kb + kc < kEnd ? *(const float4*)(a + (m0 + row) * lda + kb + kc) : zero;
            } else {
                const int kr = tid >> 4, mc = (tid & 15) * 4;
                ra = kb + kr < kEnd && m0 + mc < mEnd ? *(const float4*)(a + (kb + kr) * lda + m0 + mc) : zero;
            }
            #pragma unroll
            for (int i = 0; i < 2; i++) {
                const int id = tid + i * 256;
                if (B_K) {
                    const int row = id >> 2, kc = (id & 3) * 4;
                    rb[i] = n0 + row < N && kb + kc < kEnd ? *(const float4*)(b + (n0 + row) * ldb + kb + kc) : zero;
                } else {
                    const int kr = id >> 5, nc = (id & 31) * 4;
                    rb[i] = kb + kr < kEnd && n0 + nc < N ? *(const float4*)(b + (kb + kr) * ldb + n0 + nc) : zero;
                }
            }
        };
        auto store = [&](int s) {
            if (A_K) {
                const int row = tid >> 2, kc = (tid & 3) * 4;
                As[s][kc][row] = ra.x; As[s][kc + 1][row] = ra.y; As[s][kc + 2][row] = ra.z; As[s][kc + 3][row] = ra.w;
            } else {
                *(float4*)&As[s][tid >> 4][(tid & 15) * 4] = ra;
            }
            #pragma unroll
            for (int i = 0; i < 2; i++) {
                const int id = tid + i * 256;
                if (B_K) {
                    const int row = id >> 2, kc = (id & 3) * 4;
                    Bs[s][kc][row] = rb[i].x; Bs[s][kc + 1][row] = rb[i].y; Bs[s][kc + 2][row] = rb[i].z; Bs[s][kc + 3][row] = rb[i].w;
                } else {
                    *(float4*)&Bs[s][id >> 5][(id & 31) * 4] = rb[i];
                }
            }
        };

        float acc[4][8];
        #pragma unroll
        for (int i = 0; i < 4; i++)
            #pragma unroll
            for (int j = 0; j < 8; j++) acc[i][j] = 0.f;
        if (kTiles > 0) { fetch(0); store(0); }
        __syncthreads();
        for (int kt = 0; kt < kTiles; kt++) {
            const int s = kt & 1;
            if (kt + 1 < kTiles) fetch(kt + 1);
            #pragma unroll
            for (int k = 0; k < GS_BK; k++) {
                const float4 av = *(const float4*)&As[s][k][ty * 4];
                const float4 b0 = *(const float4*)&Bs[s][k][tx * 4], b1 = *(const float4*)&Bs[s][k][64 + tx * 4];
                const float ar[4] = {av.x, av.y, av.z, av.w};
                const float br[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
                #pragma unroll
                for (int i = 0; i < 4; i++)
                    #pragma unroll
                    for (int j = 0; j < 8; j++) acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
            }
            // The other buffer was last read in the previous iteration, before this one's barrier.
            if (kt + 1 < kTiles) store(s ^ 1);
            __syncthreads();
        }
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            const int64_t row = m0 + ty * 4 + i;
            if (row >= mEnd) continue;
            #pragma unroll
            for (int h = 0; h < 2; h++) {
                const int64_t col = n0 + h * 64 + tx * 4;
                if (col < N) *(float4*)(c + row * ldc + col) = make_float4(acc[i][h * 4], acc[i][h * 4 + 1], acc[i][h * 4 + 2], acc[i][h * 4 + 3]);
            }
        }
    }
    #define GG_ENTRY(NAME, AK, BK, VK) \
    extern "C" __global__ void __launch_bounds__(256) NAME(const T* a, const T* b, T* c, const int* offsets, const int* tiles, \
        int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, int64_t bStride, int64_t cStride) { \
        grouped_gemm_simt<AK, BK, VK>(a, b, c, offsets, tiles, M, N, K, lda, ldb, ldc, bStride, cStride); }
    #endif

    #if defined(FM_BF16) || defined(FM_F32)
    // The forward x_g W_gᵀ (both operands K-contiguous), the data gradient gy_g W_g (B N-contiguous),
    // the weight gradient gy_gᵀ x_g (A M-contiguous, B N-contiguous, summed over the expert's rows).
    GG_ENTRY(grouped_gemm_forward, true, true, false)
    GG_ENTRY(grouped_gemm_data_gradient, true, false, false)
    GG_ENTRY(grouped_gemm_weight_gradient, false, false, true)
    #endif
    """#
}
