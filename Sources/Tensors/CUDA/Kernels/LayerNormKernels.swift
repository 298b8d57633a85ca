/// Layer norm over the last axis: the forward (saving mean and rstd) and the input gradient, in a
/// block-per-row variant (`layernorm_fwd`, rows longer than 1024) and warp-per-row variants with
/// the row in registers (`layernorm_fwd_wV`, V in {1, 2, 4, 8, 16, 32}); `CUDABackend.launchRowwise`
/// picks one. The weight and bias gradients are column sums: `column_partials` mode 1 in
/// `ReductionKernels`, shared with `sumRows`.
enum LayerNormKernels {
    static let source = #"""
    extern "C" __global__ void layernorm_fwd(const T* x, const T* w, const T* b, T* out, stat_t* mean, stat_t* rstd,
                                             int64_t cols, float eps) {
        __shared__ acc_t sh[32];
        int64_t o = (int64_t)blockIdx.x * cols;
        acc_t s = 0;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += LD(x[o + j]);
        acc_t mu = block_sum(s, sh) / (acc_t)cols;
        acc_t sq = 0;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) { acc_t c = LD(x[o + j]) - mu; sq += c * c; }
        acc_t rs = (acc_t)1 / FM_SQRT(block_sum(sq, sh) / (acc_t)cols + (acc_t)eps);
        if (threadIdx.x == 0) { mean[blockIdx.x] = (stat_t)mu; rstd[blockIdx.x] = (stat_t)rs; }
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            acc_t v = (LD(x[o + j]) - mu) * rs;
            if (w) v *= LD(w[j]);
            if (b) v += LD(b[j]);
            out[o + j] = ST(v);
        }
    }

    extern "C" __global__ void layernorm_bwd_x(const T* x, const T* w, const stat_t* mean, const stat_t* rstd,
                                               const T* g, T* gx, int64_t cols) {
        __shared__ acc_t sh[32];
        int64_t o = (int64_t)blockIdx.x * cols;
        acc_t mu = (acc_t)mean[blockIdx.x], rs = (acc_t)rstd[blockIdx.x];
        acc_t sd = 0, sdx = 0;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            acc_t xhat = (LD(x[o + j]) - mu) * rs;
            acc_t d = LD(g[o + j]) * (w ? LD(w[j]) : (acc_t)1);
            sd += d; sdx += d * xhat;
        }
        sd = block_sum(sd, sh) / (acc_t)cols;
        sdx = block_sum(sdx, sh) / (acc_t)cols;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            acc_t xhat = (LD(x[o + j]) - mu) * rs;
            acc_t d = LD(g[o + j]) * (w ? LD(w[j]) : (acc_t)1);
            gx[o + j] = ST(rs * (d - sd - xhat * sdx));
        }
    }

    template <int V> __device__ __forceinline__ void layernorm_warp(const T* x, const T* w, const T* b, T* out, stat_t* mean, stat_t* rstd,
                                                                    int64_t rows, int64_t cols, float eps) {
        WARP_ROW_SETUP
        acc_t v[V];
        acc_t s = 0;
        #pragma unroll
        for (int i = 0; i < V; i++) { int64_t j = lane + 32 * i; v[i] = j < cols ? LD(x[o + j]) : (acc_t)0; s += v[i]; }
        acc_t mu = warp_sum(s) / (acc_t)cols;
        acc_t sq = 0;
        #pragma unroll
        for (int i = 0; i < V; i++) if (lane + 32 * i < cols) { acc_t c = v[i] - mu; sq += c * c; }
        acc_t rs = (acc_t)1 / FM_SQRT(warp_sum(sq) / (acc_t)cols + (acc_t)eps);
        if (lane == 0) { mean[row] = (stat_t)mu; rstd[row] = (stat_t)rs; }
        #pragma unroll
        for (int i = 0; i < V; i++) {
            int64_t j = lane + 32 * i;
            if (j < cols) {
                acc_t r = (v[i] - mu) * rs;
                if (w) r *= LD(w[j]);
                if (b) r += LD(b[j]);
                out[o + j] = ST(r);
            }
        }
    }

    template <int V> __device__ __forceinline__ void layernorm_bwd_x_warp(const T* x, const T* w, const stat_t* mean, const stat_t* rstd,
                                                                          const T* g, T* gx, int64_t rows, int64_t cols) {
        WARP_ROW_SETUP
        acc_t mu = (acc_t)mean[row], rs = (acc_t)rstd[row];
        acc_t xh[V], d[V];
        acc_t sd = 0, sdx = 0;
        #pragma unroll
        for (int i = 0; i < V; i++) {
            int64_t j = lane + 32 * i;
            if (j < cols) {
                xh[i] = (LD(x[o + j]) - mu) * rs;
                d[i] = LD(g[o + j]) * (w ? LD(w[j]) : (acc_t)1);
            } else { xh[i] = 0; d[i] = 0; }
            sd += d[i]; sdx += d[i] * xh[i];
        }
        sd = warp_sum(sd) / (acc_t)cols;
        sdx = warp_sum(sdx) / (acc_t)cols;
        #pragma unroll
        for (int i = 0; i < V; i++) { int64_t j = lane + 32 * i; if (j < cols) gx[o + j] = ST(rs * (d[i] - sd - xh[i] * sdx)); }
    }

    #define LAYERNORM_WARP_KERNELS(V) \
    extern "C" __global__ void layernorm_fwd_w##V(const T* x, const T* w, const T* b, T* out, stat_t* mean, stat_t* rstd, int64_t rows, int64_t cols, float eps) { layernorm_warp<V>(x, w, b, out, mean, rstd, rows, cols, eps); } \
    extern "C" __global__ void layernorm_bwd_x_w##V(const T* x, const T* w, const stat_t* mean, const stat_t* rstd, const T* g, T* gx, int64_t rows, int64_t cols) { layernorm_bwd_x_warp<V>(x, w, mean, rstd, g, gx, rows, cols); }
    LAYERNORM_WARP_KERNELS(1)
    LAYERNORM_WARP_KERNELS(2)
    LAYERNORM_WARP_KERNELS(4)
    LAYERNORM_WARP_KERNELS(8)
    LAYERNORM_WARP_KERNELS(16)
    LAYERNORM_WARP_KERNELS(32)
    """#
}
