/// The router's choice of experts and their combine weights (mirrors `Ops/Router.swift`;
/// `MoEBackend.routerTopK` gives the composed reference): one thread a row of logits, which fits
/// routers' few experts (N of 8 to 256; k ≤ 32).
enum RouterKernels {
    static let source = #"""
    /// The k largest of the logits (`by_probability` 0) or of softmax(logits) + bias (1; `bias` may
    /// be null), in descending order, ties to the lower expert; then the softmax over the chosen
    /// logits. The probabilities and the biased keys are rounded to T as the composed ops store them.
    extern "C" __global__ void router_topk(const T* z, const T* bias, int32_t* expert, T* score, int64_t rows, int64_t cols, int k,
                                           int by_probability) {
        int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (r >= rows) return;
        const T* row = z + r * cols;
        acc_t mx = LD(row[0]), sum = 0;
        if (by_probability) {
            for (int64_t j = 1; j < cols; j++) mx = fmax(mx, LD(row[j]));
            for (int64_t j = 0; j < cols; j++) sum += FM_EXP(LD(row[j]) - mx);
        }
        acc_t bv[32]; int32_t bi[32];
        int n = 0;
        for (int64_t j = 0; j < cols; j++) {
            acc_t v = LD(row[j]);
            if (by_probability) v = LD(ST(FM_EXP(v - mx) / sum));
            if (bias) v = LD(ST(v + LD(bias[j])));
            if (n == k && !(v > bv[k - 1])) continue;
            int pos = n < k ? n : k - 1;
            while (pos > 0 && v > bv[pos - 1]) { if (pos < k) { bv[pos] = bv[pos - 1]; bi[pos] = bi[pos - 1]; } pos--; }
            bv[pos] = v; bi[pos] = (int32_t)j;
            if (n < k) n++;
        }
        acc_t top = LD(row[bi[0]]), total = 0;
        for (int j = 1; j < k; j++) top = fmax(top, LD(row[bi[j]]));
        for (int j = 0; j < k; j++) { bv[j] = FM_EXP(LD(row[bi[j]]) - top); total += bv[j]; }
        for (int j = 0; j < k; j++) { expert[r * k + j] = bi[j]; score[r * k + j] = ST(bv[j] / total); }
    }

    /// The logits' gradient from the scores': s_j·(g_j − Σ_i s_i·g_i) at the chosen experts (the
    /// softmax backward, rounded to T as it is stored), zero elsewhere.
    extern "C" __global__ void router_topk_backward(const T* score, const int32_t* expert, const T* grad, T* gz, int64_t rows,
                                                    int64_t cols, int k) {
        int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (r >= rows) return;
        acc_t dot = 0;
        for (int j = 0; j < k; j++) dot += LD(score[r * k + j]) * LD(grad[r * k + j]);
        T* out = gz + r * cols;
        for (int64_t c = 0; c < cols; c++) out[c] = ST((acc_t)0);
        for (int j = 0; j < k; j++) out[expert[r * k + j]] = ST(LD(score[r * k + j]) * (LD(grad[r * k + j]) - dot));
    }
    """#
}
