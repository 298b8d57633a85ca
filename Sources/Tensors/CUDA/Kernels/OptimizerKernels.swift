/// Optimizer steps (mirrors `CPU/CPUMatmulAndOptimizer.swift`): AdamW on float32 parameters, and the
/// routing bias step of a captured training step (mirrors `CPURouting.routingBiasStep`).
enum OptimizerKernels {
    static let source = #"""
    /// One chunk of at most 65536 elements of one parameter (AdamWChunk in CUDAMultiTensor.swift).
    struct AdamWChunk { float* p; const float* g; float* m; float* v; int64_t n; float weight_decay; float unused; };

    /// AdamW as the CPU computes it (float32 parameters and moments), one block per chunk of every
    /// parameter. With schedule (lr, lr/(1-β1^t), sqrt(1-β2^t)) and squares (the gradients' squared
    /// norm) read from the device (ScheduledStep): clipped by max_norm, and nothing when the norm is
    /// not finite. The decay is rounded as the host rounds it (no fused multiply-add).
    extern "C" __global__ void adamw_chunks(const AdamWChunk* chunks, float beta1, float beta2, float eps, float lr,
                                            float step_size, float c2, const float* schedule, const float* squares, float max_norm) {
        float scale = 1.0f;
        if (squares) {
            float norm = sqrtf(*squares);
            if (!isfinite(norm)) return;
            if (max_norm > 0.0f && norm > max_norm) scale = max_norm / (norm + 1e-6f);
        }
        if (schedule) { lr = schedule[0]; step_size = schedule[1]; c2 = schedule[2]; }
        const AdamWChunk c = chunks[blockIdx.x];
        const float decay = 1.0f - __fmul_rn(lr, c.weight_decay);
        for (int64_t i = threadIdx.x; i < c.n; i += blockDim.x) {
            float gi = squares ? c.g[i] * scale : c.g[i];
            float mi = beta1 * c.m[i] + (1.0f - beta1) * gi;
            float vi = beta2 * c.v[i] + (1.0f - beta2) * gi * gi;
            c.m[i] = mi; c.v[i] = vi;
            c.p[i] = c.p[i] * decay - step_size * mi / (sqrtf(vi) / c2 + eps);
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
