/// Per-dtype indexing kernels: scatter-add of rows and along the last axis (atomics: duplicate
/// indices add in an unspecified order on the GPU), top-k (one thread per row, insertion into a
/// sorted buffer — k and the row are small in routing), gather along the last axis, and Philox
/// random numbers with the CPU's element-to-counter mapping (see `Philox` in Core/Philox.swift).
enum IndexingKernels {
    static let source = #"""
    extern "C" __global__ void scatter_add_rows(const T* x, const int32_t* idx, T* out, int64_t n, int64_t cols, int64_t rows) {
        GRID_STRIDE(i, n * cols) {
            int64_t r = i / cols, j = i % cols;
            int32_t k = idx[r];
            if (k >= 0 && k < rows) atomic_add_T(out + (int64_t)k * cols + j, LD(x[i]));
        }
    }

    extern "C" __global__ void topk_rows(const T* x, T* values, int32_t* indices, int64_t rows, int64_t cols, int k) {
        int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (r >= rows) return;
        const T* p = x + r * cols;
        acc_t bv[32]; int32_t bi[32];
        int n = 0;
        for (int64_t j = 0; j < cols; j++) {
            acc_t v = LD(p[j]);
            if (n == k && !(v > bv[k - 1])) continue;
            int pos = n < k ? n : k - 1;
            while (pos > 0 && v > bv[pos - 1]) { if (pos < k) { bv[pos] = bv[pos - 1]; bi[pos] = bi[pos - 1]; } pos--; }
            bv[pos] = v; bi[pos] = (int32_t)j;
            if (n < k) n++;
        }
        for (int j = 0; j < k; j++) { values[r * k + j] = ST(bv[j]); indices[r * k + j] = bi[j]; }
    }

    extern "C" __global__ void gather_last(const T* x, const int32_t* idx, T* out, int64_t n, int64_t cols, int64_t k) {
        GRID_STRIDE(i, n) {
            int32_t j = idx[i];
            out[i] = j < 0 ? ST((acc_t)0) : x[(i / k) * cols + j];
        }
    }

    extern "C" __global__ void scatter_add_last(const T* x, const int32_t* idx, T* out, int64_t n, int64_t cols, int64_t k) {
        GRID_STRIDE(i, n) {
            int32_t j = idx[i];
            if (j >= 0) atomic_add_T(out + (i / k) * cols + j, LD(x[i]));
        }
    }

    __device__ __forceinline__ void philox_block(uint32_t c[4], uint32_t k0, uint32_t k1) {
        for (int round = 0; round < 10; round++) {
            if (round > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
            uint64_t p0 = (uint64_t)0xD2511F53u * c[0];
            uint64_t p1 = (uint64_t)0xCD9E8D57u * c[2];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0, n1 = (uint32_t)p1;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1, n3 = (uint32_t)p0;
            c[0] = n0; c[1] = n1; c[2] = n2; c[3] = n3;
        }
    }

    __device__ __forceinline__ uint32_t philox_word(int64_t i, uint64_t seed, uint64_t offset) {
        uint64_t b = (uint64_t)(i / 4);
        uint32_t c[4] = { (uint32_t)b, (uint32_t)(b >> 32), (uint32_t)offset, (uint32_t)(offset >> 32) };
        philox_block(c, (uint32_t)seed, (uint32_t)(seed >> 32));
        return c[i & 3];
    }

    __device__ __forceinline__ float philox_uniform(uint32_t w) { return (float)(w >> 8) * 5.9604644775390625e-08f; }

    /// dist: 0 uniform(a, b), 1 normal(mean a, std b), 2 dropout mask with p = a.
    extern "C" __global__ void random_fill(T* out, int64_t n, uint64_t seed, uint64_t offset, int dist, double a, double b) {
        GRID_STRIDE(i, n) {
            double v;
            if (dist == 1) {
                float u1 = (float)((philox_word(2 * i, seed, offset) >> 8) + 1) * 5.9604644775390625e-08f;
                float u2 = philox_uniform(philox_word(2 * i + 1, seed, offset));
                float z = sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
                v = a + b * (double)z;
            } else {
                double u = (double)philox_uniform(philox_word(i, seed, offset));
                v = dist == 0 ? a + (b - a) * u : (u < a ? 0.0 : 1.0 / (1.0 - a));
            }
            out[i] = ST((acc_t)v);
        }
    }
    """#
}

/// Kernels that move bytes regardless of dtype (by element size 2, 4 or 8), and dtype casts.
/// Compiled once, without the per-dtype prelude choice mattering.
enum MovementKernels {
    static let source = #"""
    #define MOVE_KERNELS(S, E) \
    extern "C" __global__ void copy_block_##S(const E* x, int64_t off, int64_t stride, E* out, int64_t out_off, int64_t out_stride, int64_t rows, int64_t cols) { \
        GRID_STRIDE(i, rows * cols) { int64_t r = i / cols, c = i % cols; out[out_off + r * out_stride + c] = x[off + r * stride + c]; } \
    } \
    extern "C" __global__ void gather_rows_##S(const E* table, const int32_t* idx, E* out, int64_t n, int64_t cols, int64_t rows) { \
        GRID_STRIDE(i, n * cols) { int64_t r = i / cols; int32_t k = idx[r]; out[i] = (k >= 0 && k < rows) ? table[(int64_t)k * cols + i % cols] : (E)0; } \
    } \
    extern "C" __global__ void transpose_##S(const E* x, E* out, int64_t m, int64_t n) { \
        __shared__ E tile[32][33]; \
        int64_t base = (int64_t)blockIdx.z * m * n; \
        int64_t i0 = (int64_t)blockIdx.y * 32, j0 = (int64_t)blockIdx.x * 32; \
        for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) { \
            int64_t i = i0 + dy, j = j0 + threadIdx.x; \
            if (i < m && j < n) tile[dy][threadIdx.x] = x[base + i * n + j]; \
        } \
        __syncthreads(); \
        for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) { \
            int64_t j = j0 + dy, i = i0 + threadIdx.x; \
            if (i < m && j < n) out[base + j * m + i] = tile[threadIdx.x][dy]; \
        } \
    }
    MOVE_KERNELS(2, unsigned short)
    MOVE_KERNELS(4, unsigned int)
    MOVE_KERNELS(8, unsigned long long)

    __device__ __forceinline__ double load_as_double(const void* p, int64_t i, int dtype) {
        switch (dtype) {
        case 0: return (double)((const float*)p)[i];
        case 1: return ((const double*)p)[i];
        case 2: return (double)bf16_to_float(((const bf16_t*)p)[i]);
        default: return (double)((const int32_t*)p)[i];
        }
    }

    /// dtype codes: 0 float32, 1 float64, 2 bfloat16, 3 int32 (the order of `DType.allCases`).
    extern "C" __global__ void cast_any(const void* x, int src, void* out, int dst, int64_t n) {
        GRID_STRIDE(i, n) {
            double v = load_as_double(x, i, src);
            switch (dst) {
            case 0: ((float*)out)[i] = (float)v; break;
            case 1: ((double*)out)[i] = v; break;
            // float32 first, then round to bfloat16: the CPU's double rounding, bit for bit.
            case 2: ((bf16_t*)out)[i] = src == 2 ? ((const bf16_t*)x)[i] : float_to_bf16((float)v); break;
            default: ((int32_t*)out)[i] = (int32_t)v; break;
            }
        }
    }

    extern "C" __global__ void fill_int32(int32_t* out, int64_t n, int32_t value) { GRID_STRIDE(i, n) out[i] = value; }
    extern "C" __global__ void arange_int32(int32_t* out, int64_t n, double start, double step) {
        GRID_STRIDE(i, n) out[i] = (int32_t)(start + (double)i * step);
    }
    """#
}
