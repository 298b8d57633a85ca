/// Source shared by every kernel module: fixed-width integer types, bfloat16 bit conversions, and
/// the element type `T` with its accumulator `acc_t`, chosen by the macro the compiler prepends
/// (`FM_F32`, `FM_F64` or `FM_BF16`).
///
/// No CUDA headers: NVRTC compiles this on a machine that may have only the driver and the runtime
/// libraries, so bfloat16 is a 16-bit integer, rounded to nearest even as the CPU does (by hand
/// before Ampere's conversion instruction).
enum KernelPrelude {
    static let source = #"""
    typedef unsigned int uint32_t;
    typedef int int32_t;
    typedef unsigned long long uint64_t;
    typedef long long int64_t;
    typedef unsigned short bf16_t;

    __device__ __forceinline__ float bf16_to_float(bf16_t v) { return __uint_as_float(((uint32_t)v) << 16); }
    __device__ __forceinline__ bf16_t float_to_bf16(float f) {
    #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        // One instruction from Ampere on, rounding as below (a NaN becomes the canonical one): the
        // six the bit arithmetic takes were a visible share of the grouped GEMMs' epilogues.
        bf16_t r;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
        return r;
    #else
        uint32_t u = __float_as_uint(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (bf16_t)(u >> 16);
    #endif
    }

    #if defined(FM_F64)
    typedef double T; typedef double acc_t;
    __device__ __forceinline__ acc_t LD(T v) { return v; }
    __device__ __forceinline__ T ST(acc_t v) { return v; }
    #define FM_EXP exp
    #define FM_LOG log
    #define FM_TANH tanh
    #define FM_ERF erf
    #define FM_SQRT sqrt
    #elif defined(FM_BF16)
    typedef bf16_t T; typedef float acc_t;
    __device__ __forceinline__ acc_t LD(T v) { return bf16_to_float(v); }
    __device__ __forceinline__ T ST(acc_t v) { return float_to_bf16(v); }
    #define FM_EXP expf
    #define FM_LOG logf
    #define FM_TANH tanhf
    #define FM_ERF erff
    #define FM_SQRT sqrtf
    // What the logistic activations (sigmoid, SiLU, GELU tanh) are made of, where the result is
    // rounded to bfloat16: the hardware's exp2 and reciprocal approximations (relative errors near
    // 2^-21, far below bfloat16's 2^-9) in place of the library's `expf` and IEEE division, whose
    // ~40 instructions a value made the grouped GEMMs' activation epilogues cost more than their
    // MMAs at short K (perf-notes, change 30).
    #define FM_EXP_FAST __expf
    #define FM_DIV(a, b) __fdividef(a, b)
    #else
    typedef float T; typedef float acc_t;
    __device__ __forceinline__ acc_t LD(T v) { return v; }
    __device__ __forceinline__ T ST(acc_t v) { return v; }
    #define FM_EXP expf
    #define FM_LOG logf
    #define FM_TANH tanhf
    #define FM_ERF erff
    #define FM_SQRT sqrtf
    #endif
    #ifndef FM_EXP_FAST
    #define FM_EXP_FAST FM_EXP
    #define FM_DIV(a, b) ((a) / (b))
    #endif

    /// Saved row statistics: float, or double for float64 inputs (DType.statistics).
    #if defined(FM_F64)
    typedef double stat_t;
    #define FM_NEG_INF __longlong_as_double(0xfff0000000000000ULL)
    #else
    typedef float stat_t;
    #define FM_NEG_INF __int_as_float(0xff800000)
    #endif

    #define GRID_STRIDE(i, n) for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)blockDim.x * gridDim.x)

    /// Sum over a block of up to 1024 threads; every thread gets the result. `shared` holds 32 values.
    __device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* shared) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        __syncthreads();
        if (lane == 0) shared[warp] = v;
        __syncthreads();
        int warps = (blockDim.x + 31) >> 5;
        v = lane < warps ? shared[lane] : (acc_t)0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
    }

    __device__ __forceinline__ acc_t block_max(acc_t v, acc_t* shared) {
        for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        __syncthreads();
        if (lane == 0) shared[warp] = v;
        __syncthreads();
        int warps = (blockDim.x + 31) >> 5;
        v = lane < warps ? shared[lane] : (acc_t)FM_NEG_INF;
        for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
    }

    /// Row kernels for rows of at most 1024 elements run one warp per row, the row held in registers
    /// (`V` values per lane, lane-strided so every load is coalesced), reductions by warp shuffles
    /// only: one pass over memory in and one out, instead of the block kernels' re-reads and
    /// `__syncthreads`. Each family instantiates its templates for V in {1, 2, 4, 8, 16, 32} as
    /// `NAME_wV`; the backend picks the smallest V with 32·V ≥ cols.
    __device__ __forceinline__ acc_t warp_sum(acc_t v) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
    }
    __device__ __forceinline__ acc_t warp_max(acc_t v) {
        for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
    }

    #define WARP_ROW_SETUP \
        int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); \
        if (row >= rows) return; \
        int lane = threadIdx.x & 31; \
        int64_t o = row * cols;

    /// Atomic add of an element; bfloat16 goes through a compare-and-swap on its 32-bit word.
    __device__ __forceinline__ void atomic_add_T(T* p, acc_t v) {
    #if defined(FM_BF16)
        uint32_t* word = (uint32_t*)((size_t)p & ~(size_t)3);
        bool high = ((size_t)p & 2) != 0;
        uint32_t old = *word, assumed;
        do {
            assumed = old;
            bf16_t cur = high ? (bf16_t)(assumed >> 16) : (bf16_t)(assumed & 0xffffu);
            bf16_t next = float_to_bf16(bf16_to_float(cur) + v);
            uint32_t repl = high ? ((assumed & 0xffffu) | ((uint32_t)next << 16)) : ((assumed & 0xffff0000u) | next);
            old = atomicCAS(word, assumed, repl);
        } while (assumed != old);
    #else
        atomicAdd(p, v);
    #endif
    }
    """#
}
