/// Optimizer steps (mirrors `CPU/CPUMatmulAndOptimizer.swift`): AdamW on float32 parameters, and the
/// routing bias step of a captured training step (mirrors `CPURouting.routingBiasStep`).
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

    /// adamw with the schedule (lr, lr/(1-β1^t), sqrt(1-β2^t)) and the gradients' squared norm read
    /// from the device (ScheduledStep): clipped by max_norm, skipped when the norm is not finite.
    extern "C" __global__ void adamw_scheduled(float* p, const float* g, float* m, float* v, int64_t n,
                                               float beta1, float beta2, float eps, float weight_decay,
                                               const float* schedule, const float* squares, float max_norm) {
        float norm = sqrtf(*squares);
        if (!isfinite(norm)) return;
        float scale = max_norm > 0.0f && norm > max_norm ? max_norm / (norm + 1e-6f) : 1.0f;
        float lr = schedule[0], step_size = schedule[1], c2 = schedule[2], decay = 1.0f - lr * weight_decay;
        GRID_STRIDE(i, n) {
            float gi = g[i] * scale;
            float mi = beta1 * m[i] + (1.0f - beta1) * gi;
            float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
            m[i] = mi; v[i] = vi;
            p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) / c2 + eps);
        }
    }

    /// A bias-balanced router's step: bias[e] += rate * sign(mean - routed[e]), compared exactly as
    /// sign(total - n * routed[e]); nothing when squares (the step's squared gradient norm) is given
    /// and not finite. One block.
    extern "C" __global__ void routing_bias_step(float* bias, const int* routed, int n, float rate, const float* squares) {
        if (squares && !isfinite(sqrtf(*squares))) return;
        __shared__ long long total;
        if (threadIdx.x == 0) total = 0;
        __syncthreads();
        long long mine = 0;
        for (int e = threadIdx.x; e < n; e += blockDim.x) mine += routed[e];
        atomicAdd((unsigned long long*)&total, (unsigned long long)mine);
        __syncthreads();
        for (int e = threadIdx.x; e < n; e += blockDim.x) {
            long long d = total - (long long)n * routed[e];
            if (d != 0) bias[e] += d > 0 ? rate : -rate;
        }
    }
    """#
}
