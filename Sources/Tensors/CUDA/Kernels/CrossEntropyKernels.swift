/// Cross-entropy from logits (mirrors `Ops/Losses.swift`), one block per row: the forward saves
/// each row's logsumexp, which the backward reuses for softmax − onehot.
enum CrossEntropyKernels {
    static let source = #"""
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
