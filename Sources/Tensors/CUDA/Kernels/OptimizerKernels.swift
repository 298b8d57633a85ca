/// Optimizer steps (mirrors `CPU/CPUMatmulAndOptimizer.swift`): AdamW on float32 parameters, and the
/// routing bias step of a captured training step (mirrors `CPURouting.routingBiasStep`).
enum OptimizerKernels {
    static let source = #"""
    /// One chunk of at most 65536 elements of one parameter (AdamWChunk in CUDAMultiTensor.swift).
    struct AdamWChunk { float* p; const float* g; float* m; float* v; int64_t n; float weight_decay; float unused; };

    /// One value's AdamW update, in place.
    __device__ __forceinline__ void adamw_value(float& p, float g, float& m, float& v, bool clip, float scale, float beta1, float beta2,
                                                float eps, float step_size, float c2, float decay) {
        const float gi = clip ? g * scale : g;
        m = beta1 * m + (1.0f - beta1) * gi;
        v = beta2 * v + (1.0f - beta2) * gi * gi;
        p = p * decay - step_size * m / (sqrtf(v) / c2 + eps);
    }

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
        const bool clip = squares != nullptr;
        // Four values a thread in 16-byte loads and stores where the chunk's tensors allow (one
        // value a thread moved a quarter of the bandwidth), then the rest one at a time; each value
        // is computed as alone, so the result does not depend on the path.
        const bool vector = (((uint64_t)c.p | (uint64_t)c.g | (uint64_t)c.m | (uint64_t)c.v) & 15) == 0;
        const int64_t quads = vector ? c.n / 4 : 0;
        for (int64_t i = threadIdx.x; i < quads; i += blockDim.x) {
            float4 p = ((float4*)c.p)[i], g = ((const float4*)c.g)[i], m = ((float4*)c.m)[i], v = ((float4*)c.v)[i];
            adamw_value(p.x, g.x, m.x, v.x, clip, scale, beta1, beta2, eps, step_size, c2, decay);
            adamw_value(p.y, g.y, m.y, v.y, clip, scale, beta1, beta2, eps, step_size, c2, decay);
            adamw_value(p.z, g.z, m.z, v.z, clip, scale, beta1, beta2, eps, step_size, c2, decay);
            adamw_value(p.w, g.w, m.w, v.w, clip, scale, beta1, beta2, eps, step_size, c2, decay);
            ((float4*)c.p)[i] = p; ((float4*)c.m)[i] = m; ((float4*)c.v)[i] = v;
        }
        for (int64_t i = quads * 4 + threadIdx.x; i < c.n; i += blockDim.x)
            adamw_value(c.p[i], c.g[i], c.m[i], c.v[i], clip, scale, beta1, beta2, eps, step_size, c2, decay);
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
