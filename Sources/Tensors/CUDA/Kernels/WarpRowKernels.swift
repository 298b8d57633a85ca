/// Row-wise kernels for rows of at most 1024 elements: one warp per row, the row held in registers
/// (`V` values per lane, lane-strided so every load is coalesced), reductions by warp shuffles only.
/// One pass over memory in and one out, instead of the block kernels' re-reads and `__syncthreads`.
/// Each template is instantiated for V in {1, 2, 4, 8, 16, 32} as `NAME_wV`; the backend picks the
/// smallest V with 32·V ≥ cols.
enum WarpRowKernels {
    static let source = #"""
    __device__ __forceinline__ acc_t warp_sum(acc_t v) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
    }
    __device__ __forceinline__ acc_t warp_max(acc_t v) {
        for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
    }

    #define WARP_ROW_SETUP \
        int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); \
        if (row >= rows) return; \
        int lane = threadIdx.x & 31; \
        int64_t o = row * cols;

    template <int V> __device__ __forceinline__ void softmax_warp(const T* x, T* out, int64_t rows, int64_t cols, int log_form) {
        WARP_ROW_SETUP
        acc_t v[V];
        acc_t m = FM_NEG_INF;
        #pragma unroll
        for (int i = 0; i < V; i++) { int64_t j = lane + 32 * i; v[i] = j < cols ? LD(x[o + j]) : (acc_t)FM_NEG_INF; m = fmax(m, v[i]); }
        m = warp_max(m);
        acc_t s = 0;
        #pragma unroll
        for (int i = 0; i < V; i++) if (lane + 32 * i < cols) s += FM_EXP(v[i] - m);
        s = warp_sum(s);
        if (log_form) {
            acc_t lse = m + FM_LOG(s);
            #pragma unroll
            for (int i = 0; i < V; i++) { int64_t j = lane + 32 * i; if (j < cols) out[o + j] = ST(v[i] - lse); }
        } else {
            acc_t inv = (acc_t)1 / s;
            #pragma unroll
            for (int i = 0; i < V; i++) { int64_t j = lane + 32 * i; if (j < cols) out[o + j] = ST(FM_EXP(v[i] - m) * inv); }
        }
    }

    template <int V> __device__ __forceinline__ void softmax_bwd_warp(const T* y, const T* g, T* out, int64_t rows, int64_t cols, int log_form) {
        WARP_ROW_SETUP
        acc_t yv[V], gv[V];
        acc_t dot = 0;
        #pragma unroll
        for (int i = 0; i < V; i++) {
            int64_t j = lane + 32 * i;
            yv[i] = j < cols ? LD(y[o + j]) : (acc_t)0;
            gv[i] = j < cols ? LD(g[o + j]) : (acc_t)0;
            dot += log_form ? gv[i] : gv[i] * yv[i];
        }
        dot = warp_sum(dot);
        #pragma unroll
        for (int i = 0; i < V; i++) {
            int64_t j = lane + 32 * i;
            if (j < cols) out[o + j] = ST(log_form ? gv[i] - FM_EXP(yv[i]) * dot : yv[i] * (gv[i] - dot));
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

    #define WARP_ROW_KERNELS(V) \
    extern "C" __global__ void softmax_fwd_w##V(const T* x, T* out, int64_t rows, int64_t cols, int log_form) { softmax_warp<V>(x, out, rows, cols, log_form); } \
    extern "C" __global__ void softmax_bwd_w##V(const T* y, const T* g, T* out, int64_t rows, int64_t cols, int log_form) { softmax_bwd_warp<V>(y, g, out, rows, cols, log_form); } \
    extern "C" __global__ void layernorm_fwd_w##V(const T* x, const T* w, const T* b, T* out, stat_t* mean, stat_t* rstd, int64_t rows, int64_t cols, float eps) { layernorm_warp<V>(x, w, b, out, mean, rstd, rows, cols, eps); } \
    extern "C" __global__ void layernorm_bwd_x_w##V(const T* x, const T* w, const stat_t* mean, const stat_t* rstd, const T* g, T* gx, int64_t rows, int64_t cols) { layernorm_bwd_x_warp<V>(x, w, mean, rstd, g, gx, rows, cols); }
    WARP_ROW_KERNELS(1)
    WARP_ROW_KERNELS(2)
    WARP_ROW_KERNELS(4)
    WARP_ROW_KERNELS(8)
    WARP_ROW_KERNELS(16)
    WARP_ROW_KERNELS(32)

    /// Column sums in two deterministic stages: a [chunks, cols] partial-sum pass where block (32, 8)
    /// owns 32 columns × one chunk of rows, then one thread per column adds the chunks in order.
    /// `mode` 0: Σ x; 1: layer-norm parameter gradients Σ g·x̂ (into p0) and Σ g (into p1).
    extern "C" __global__ void column_partials(const T* x, const T* g, const stat_t* mean, const stat_t* rstd,
                                               acc_t* p0, acc_t* p1, int64_t rows, int64_t cols, int64_t chunk, int mode) {
        __shared__ acc_t s0[8][33], s1[8][33];
        int64_t j = (int64_t)blockIdx.x * 32 + threadIdx.x;
        int64_t r0 = (int64_t)blockIdx.y * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
        acc_t a0 = 0, a1 = 0;
        if (j < cols) {
            for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
                if (mode == 0) {
                    a0 += LD(x[r * cols + j]);
                } else {
                    acc_t gv = LD(g[r * cols + j]);
                    a0 += gv * (LD(x[r * cols + j]) - (acc_t)mean[r]) * (acc_t)rstd[r];
                    a1 += gv;
                }
            }
        }
        s0[threadIdx.y][threadIdx.x] = a0; s1[threadIdx.y][threadIdx.x] = a1;
        __syncthreads();
        if (threadIdx.y == 0 && j < cols) {
            for (int k = 1; k < 8; k++) { a0 += s0[k][threadIdx.x]; a1 += s1[k][threadIdx.x]; }
            p0[blockIdx.y * cols + j] = a0;
            if (mode == 1) p1[blockIdx.y * cols + j] = a1;
        }
    }

    extern "C" __global__ void column_finish(const acc_t* p0, const acc_t* p1, T* out0, T* out1, int64_t chunks, int64_t cols) {
        int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (j >= cols) return;
        acc_t a0 = 0, a1 = 0;
        for (int64_t c = 0; c < chunks; c++) { a0 += p0[c * cols + j]; if (p1) a1 += p1[c * cols + j]; }
        if (out0) out0[j] = ST(a0);
        if (out1) out1[j] = ST(a1);
    }
    """#
}
