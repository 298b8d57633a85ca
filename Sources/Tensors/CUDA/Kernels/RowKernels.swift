/// Row-wise kernels, one block per row of `cols` elements: last-axis reductions, cross-entropy and
/// its backward, and the softmax and layer-norm kernels for rows longer than 1024 (shorter rows use
/// the warp-per-row kernels of `WarpRowKernels`).
enum RowKernels {
    static let source = #"""
    extern "C" __global__ void reduce_last(int op, const T* x, T* out, int64_t cols) {
        __shared__ acc_t sh[32];
        const T* p = x + (int64_t)blockIdx.x * cols;
        acc_t v = op == 0 ? (acc_t)0 : (acc_t)FM_NEG_INF;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            acc_t e = LD(p[j]);
            v = op == 0 ? v + e : fmax(v, e);
        }
        v = op == 0 ? block_sum(v, sh) : block_max(v, sh);
        if (threadIdx.x == 0) out[blockIdx.x] = ST(v);
    }

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

    extern "C" __global__ void cross_entropy_fwd(const T* x, const int32_t* t, T* loss, T* valid, stat_t* lse,
                                                 int64_t cols, int32_t ignore) {
        __shared__ acc_t sh[32];
        int64_t o = (int64_t)blockIdx.x * cols;
        acc_t m = FM_NEG_INF;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) m = fmax(m, LD(x[o + j]));
        m = block_max(m, sh);
        acc_t s = 0;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += FM_EXP(LD(x[o + j]) - m);
        s = block_sum(s, sh);
        if (threadIdx.x == 0) {
            acc_t z = m + FM_LOG(s);
            lse[blockIdx.x] = (stat_t)z;
            int32_t target = t[blockIdx.x];
            bool keep = target != ignore && target >= 0 && target < cols;
            loss[blockIdx.x] = ST(keep ? z - LD(x[o + target]) : (acc_t)0);
            valid[blockIdx.x] = ST(keep ? (acc_t)1 : (acc_t)0);
        }
    }

    extern "C" __global__ void cross_entropy_bwd(const T* x, const int32_t* t, const stat_t* lse, const T* gl, T* gx,
                                                 int64_t cols, int32_t ignore) {
        int64_t o = (int64_t)blockIdx.x * cols;
        int32_t target = t[blockIdx.x];
        bool keep = target != ignore && target >= 0 && target < cols;
        acc_t z = (acc_t)lse[blockIdx.x], gr = LD(gl[blockIdx.x]);
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            acc_t v = keep ? gr * (FM_EXP(LD(x[o + j]) - z) - (j == target ? (acc_t)1 : (acc_t)0)) : (acc_t)0;
            gx[o + j] = ST(v);
        }
    }
    """#
}
