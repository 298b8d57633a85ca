/// Optimizer steps (mirrors `CPU/CPUMatmulAndOptimizer.swift`): AdamW on float32 parameters.
enum OptimizerKernels {
    static let source = #"""
    /// AdamW as the CPU computes it (float32 parameters and moments only).
    extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, int64_t n,
                                     float lr, float beta1, float beta2, float eps, float decay, float step_size, float c2) {
        GRID_STRIDE(i, n) {
            float gi = g[i];
            float mi = beta1 * m[i] + (1.0f - beta1) * gi;
            float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
            m[i] = mi; v[i] = vi;
            p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) / c2 + eps);
        }
    }
    """#
}
