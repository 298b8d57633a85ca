/// The MoE permutation's summing gather (`Backend.gatherSumRows`): the combine of the `k` expert
/// outputs of each token, and the backward of the token permutation. One thread per output element
/// walks the token's `k` slots in order and accumulates in `acc_t`: a fixed order and no atomics, so
/// the result is bit-reproducible for every `k`. Reads of `x` are coalesced along the row.
enum DispatchKernels {
    static let source = #"""
    extern "C" __global__ void gather_sum_rows(const T* x, const int32_t* idx, const T* w, T* out,
                                               int64_t tokens, int64_t cols, int64_t k, int64_t rows) {
        GRID_STRIDE(i, tokens * cols) {
            int64_t t = i / cols, c = i % cols;
            acc_t sum = (acc_t)0;
            for (int64_t j = 0; j < k; j++) {
                int32_t r = idx[t * k + j];
                if (r < 0 || r >= rows) continue;
                acc_t weight = w ? LD(w[t * k + j]) : (acc_t)1;
                sum += weight * LD(x[(int64_t)r * cols + c]);
            }
            out[i] = ST(sum);
        }
    }
    """#
}
