/// Softmax and log-softmax over the last axis, forward and backward (`log_form` picks the log
/// variant). Rows of at most 1024 elements run one warp per row with the row in registers
/// (`softmax_fwd_wV`, V in {1, 2, 4, 8, 16, 32}, see `WARP_ROW_SETUP` in the prelude); longer rows
/// run one block per row (`softmax_fwd`). `CUDABackend.launchRowwise` picks the variant.
enum SoftmaxKernels {
    static let source = #"""
    extern "C" __global__ void softmax_fwd(const T* x, T* out, int64_t cols, int log_form) {
        __shared__ acc_t sh[32];
        const T* p = x + (int64_t)blockIdx.x * cols;
        T* q = out + (int64_t)blockIdx.x * cols;
        acc_t m = FM_NEG_INF;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) m = fmax(m, LD(p[j]));
        m = block_max(m, sh);
        acc_t s = 0;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += FM_EXP(LD(p[j]) - m);
        s = block_sum(s, sh);
        if (log_form) {
            acc_t lse = m + FM_LOG(s);
            for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) q[j] = ST(LD(p[j]) - lse);
        } else {
            acc_t inv = (acc_t)1 / s;
            for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) q[j] = ST(FM_EXP(LD(p[j]) - m) * inv);
        }
    }

    extern "C" __global__ void softmax_bwd(const T* y, const T* g, T* out, int64_t cols, int log_form) {
        __shared__ acc_t sh[32];
        int64_t o = (int64_t)blockIdx.x * cols;
        acc_t dot = 0;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
            dot += log_form ? LD(g[o + j]) : LD(g[o + j]) * LD(y[o + j]);
        dot = block_sum(dot, sh);
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            acc_t yj = LD(y[o + j]), gj = LD(g[o + j]);
            out[o + j] = ST(log_form ? gj - FM_EXP(yj) * dot : yj * (gj - dot));
        }
    }

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

    #define SOFTMAX_WARP_KERNELS(V) \
    extern "C" __global__ void softmax_fwd_w##V(const T* x, T* out, int64_t rows, int64_t cols, int log_form) { softmax_warp<V>(x, out, rows, cols, log_form); } \
    extern "C" __global__ void softmax_bwd_w##V(const T* y, const T* g, T* out, int64_t rows, int64_t cols, int log_form) { softmax_bwd_warp<V>(y, g, out, rows, cols, log_form); }
    SOFTMAX_WARP_KERNELS(1)
    SOFTMAX_WARP_KERNELS(2)
    SOFTMAX_WARP_KERNELS(4)
    SOFTMAX_WARP_KERNELS(8)
    SOFTMAX_WARP_KERNELS(16)
    SOFTMAX_WARP_KERNELS(32)
    """#
}
