/// Kernels that move bytes regardless of dtype (by element size 2, 4 or 8, and block copies and row
/// gathers also by 16-byte vectors): block copies, row gathers, transposes; dtype casts; int32 fill
/// and arange. Compiled once, in the dtype-independent module, without the per-dtype prelude choice
/// mattering.
enum MovementKernels {
    static let source = #"""
    #define MOVE_KERNELS(S, E) \
    extern "C" __global__ void copy_block_##S(const E* x, int64_t off, int64_t stride, E* out, int64_t out_off, int64_t out_stride, int64_t rows, int64_t cols) { \
        GRID_STRIDE(i, rows * cols) { int64_t r = i / cols, c = i % cols; out[out_off + r * out_stride + c] = x[off + r * stride + c]; } \
    } \
    extern "C" __global__ void gather_rows_##S(const E* table, const int32_t* idx, E* out, int64_t n, int64_t cols, int64_t rows) { \
        E zero{}; \
        GRID_STRIDE(i, n * cols) { int64_t r = i / cols; int32_t k = idx[r]; out[i] = (k >= 0 && k < rows) ? table[(int64_t)k * cols + i % cols] : zero; } \
    }
    #define TRANSPOSE_KERNEL(S, E) \
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
    /// float32 to bfloat16 and back, 8 values a thread in 16-byte stores, where the host checked the
    /// count and addresses: mixed precision's casts (every weight each forward, every gradient each
    /// backward), which `cast_any`, a value a thread through double, ran at a fraction of the bandwidth.
    /// The same rounding as `cast_any`'s.
    __device__ __forceinline__ void cast8_f32_bf16(const float4* x, uint4* out, int64_t i) {
        const float4 a = x[2 * i], b = x[2 * i + 1];
        uint4 o;
        o.x = (uint32_t)float_to_bf16(a.x) | ((uint32_t)float_to_bf16(a.y) << 16);
        o.y = (uint32_t)float_to_bf16(a.z) | ((uint32_t)float_to_bf16(a.w) << 16);
        o.z = (uint32_t)float_to_bf16(b.x) | ((uint32_t)float_to_bf16(b.y) << 16);
        o.w = (uint32_t)float_to_bf16(b.z) | ((uint32_t)float_to_bf16(b.w) << 16);
        out[i] = o;
    }
    extern "C" __global__ void cast_f32_bf16_x8(const float4* x, uint4* out, int64_t n8) {
        GRID_STRIDE(i, n8) cast8_f32_bf16(x, out, i);
    }
    /// float32 to bfloat16 over many tensors in one launch (`castMany`): a block a chunk, the table
    /// holding (source, destination, count) for each; 8 values a thread where the chunk's addresses
    /// allow, the same rounding either way.
    extern "C" __global__ void cast_f32_bf16_chunks(const long long* table) {
        const float* x = (const float*)table[3 * blockIdx.x];
        bf16_t* out = (bf16_t*)table[3 * blockIdx.x + 1];
        const int64_t n = table[3 * blockIdx.x + 2];
        int64_t done = 0;
        if ((unsigned long long)x % 16 == 0 && (unsigned long long)out % 16 == 0) {
            const int64_t n8 = n / 8;
            for (int64_t i = threadIdx.x; i < n8; i += blockDim.x) cast8_f32_bf16((const float4*)x, (uint4*)out, i);
            done = 8 * n8;
        }
        for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) out[i] = float_to_bf16(x[i]);
    }
    extern "C" __global__ void cast_bf16_f32_x8(const uint4* x, float4* out, int64_t n8) {
        GRID_STRIDE(i, n8) {
            const uint4 a = x[i];
            out[2 * i] = make_float4(bf16_to_float((bf16_t)a.x), bf16_to_float((bf16_t)(a.x >> 16)),
                                     bf16_to_float((bf16_t)a.y), bf16_to_float((bf16_t)(a.y >> 16)));
            out[2 * i + 1] = make_float4(bf16_to_float((bf16_t)a.z), bf16_to_float((bf16_t)(a.z >> 16)),
                                         bf16_to_float((bf16_t)a.w), bf16_to_float((bf16_t)(a.w >> 16)));
        }
    }

    MOVE_KERNELS(2, unsigned short)
    MOVE_KERNELS(4, unsigned int)
    MOVE_KERNELS(8, unsigned long long)
    // 16 bytes a thread, where the row lengths, offsets and base addresses allow (the host checks).
    MOVE_KERNELS(16, uint4)
    TRANSPOSE_KERNEL(2, unsigned short)
    TRANSPOSE_KERNEL(4, unsigned int)
    TRANSPOSE_KERNEL(8, unsigned long long)

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
