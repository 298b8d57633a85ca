/// Elementwise kernels (mirrors `Ops/Elementwise.swift` and `CPU/CPUElementwise.swift`): unary ops
/// and their derivatives (one kernel per op, `unary_fwd_CODE`), binary ops with broadcast, scalar
/// ops, the causal mask, fill and arange. Op codes are the case order of
/// `UnaryOp` / `BinaryOp`.
enum ElementwiseKernels {
    /// The unary ops' values and derivatives by op code, also read by the grouped GEMMs' epilogues
    /// (`GroupedGemmKernels.common`).
    static let unaryFunctions = #"""
    // Each case ends with the `UnaryOp` case it implements: KernelSourceTests checks the codes
    // against `UnaryOp.allCases`, so the CPU and CUDA numbering cannot drift apart.
    __device__ __forceinline__ acc_t unary_value(int op, acc_t x) {
        switch (op) {
        case 0: return -x;                                   // neg
        case 1: return FM_EXP(x);                            // exp
        case 2: return FM_LOG(x);                            // log
        case 3: return FM_SQRT(x);                           // sqrt
        case 4: return FM_TANH(x);                           // tanh
        case 5: return x > 0 ? x : (acc_t)0;                 // relu
        // The logistic ones through FM_EXP_FAST and FM_DIV (KernelPrelude: approximations in bfloat16).
        case 6: return FM_DIV((acc_t)1, (acc_t)1 + FM_EXP_FAST(-x));   // sigmoid
        case 7: return FM_DIV(x, (acc_t)1 + FM_EXP_FAST(-x));          // silu
        // gelu tanh: 0.5·x·(1 + tanh(u)) = x·sigmoid(2u), one exp instead of tanh's longer sequence.
        case 8: { acc_t u = (acc_t)0.7978845608028654 * (x + (acc_t)0.044715 * x * x * x);   // geluTanh
                  return FM_DIV(x, (acc_t)1 + FM_EXP_FAST((acc_t)-2 * u)); }
        case 9: return (acc_t)0.5 * x * ((acc_t)1 + FM_ERF(x * (acc_t)0.7071067811865476)); // geluErf
        case 10: return x * x;                               // square
        case 11: return (acc_t)1 / x;                        // reciprocal
        case 12: return x < 0 ? -x : x;                      // abs
        case 13: return FM_ERF(x);                           // erf
        default: return (acc_t)__int_as_float(0x7fc00000);   // no such op: NaN, which every test catches
        }
    }

    __device__ __forceinline__ acc_t unary_derivative(int op, acc_t x) {
        switch (op) {
        case 0: return (acc_t)-1;                            // neg
        case 1: return FM_EXP(x);                            // exp
        case 2: return (acc_t)1 / x;                         // log
        case 3: return (acc_t)1 / ((acc_t)2 * FM_SQRT(x));   // sqrt
        case 4: { acc_t t = FM_TANH(x); return (acc_t)1 - t * t; }   // tanh
        case 5: return x > 0 ? (acc_t)1 : (acc_t)0;          // relu
        case 6: { acc_t s = FM_DIV((acc_t)1, (acc_t)1 + FM_EXP_FAST(-x)); return s * ((acc_t)1 - s); }   // sigmoid
        case 7: { acc_t s = FM_DIV((acc_t)1, (acc_t)1 + FM_EXP_FAST(-x)); return s * ((acc_t)1 + x * ((acc_t)1 - s)); }   // silu
        case 8: { acc_t inner = (acc_t)0.7978845608028654 * (x + (acc_t)0.044715 * x * x * x);   // geluTanh
                  acc_t t = FM_DIV((acc_t)2, (acc_t)1 + FM_EXP_FAST((acc_t)-2 * inner)) - (acc_t)1;   // tanh(inner)
                  acc_t d = (acc_t)0.7978845608028654 * ((acc_t)1 + (acc_t)3 * (acc_t)0.044715 * x * x);
                  return (acc_t)0.5 * ((acc_t)1 + t) + (acc_t)0.5 * x * ((acc_t)1 - t * t) * d; }
        case 9: return (acc_t)0.5 * ((acc_t)1 + FM_ERF(x * (acc_t)0.7071067811865476))   // geluErf
                       + x * (acc_t)0.3989422804014327 * FM_EXP(-x * x / (acc_t)2);
        case 10: return (acc_t)2 * x;                        // square
        case 11: return (acc_t)-1 / (x * x);                 // reciprocal
        case 12: return x > 0 ? (acc_t)1 : (x < 0 ? (acc_t)-1 : (acc_t)0);   // abs
        case 13: return (acc_t)1.1283791670955126 * FM_EXP(-x * x);          // erf: 2/√π · e^{−x²}
        default: return (acc_t)__int_as_float(0x7fc00000);   // no such op: NaN
        }
    }
    """#

    static let source = unaryFunctions + "\n" + kernels

    static let kernels = #"""
    __device__ __forceinline__ acc_t binary_value(int op, acc_t a, acc_t b) {
        switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        default: return a / b;
        }
    }

    /// Four elements per thread through one vector load and store (16 bytes for float32), with the op
    /// fixed at compile time: the per-element work is then the math alone. `vec` is 0 when a pointer is
    /// not aligned to the vector (a row view at an odd offset); the tail past n/4·4 is scalar.
    struct __align__(4 * sizeof(T) > 16 ? 16 : 4 * sizeof(T)) Vec4 { T v[4]; };

    template <int OP> __device__ __forceinline__ void unary_fwd_body(const T* x, T* out, int64_t n, int vec) {
        int64_t quads = vec ? n / 4 : 0;
        GRID_STRIDE(i, quads) {
            Vec4 a = reinterpret_cast<const Vec4*>(x)[i];
            #pragma unroll
            for (int k = 0; k < 4; k++) a.v[k] = ST(unary_value(OP, LD(a.v[k])));
            reinterpret_cast<Vec4*>(out)[i] = a;
        }
        for (int64_t i = quads * 4 + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)blockDim.x * gridDim.x)
            out[i] = ST(unary_value(OP, LD(x[i])));
    }

    template <int OP> __device__ __forceinline__ void unary_bwd_body(const T* x, const T* g, T* out, int64_t n, int vec) {
        int64_t quads = vec ? n / 4 : 0;
        GRID_STRIDE(i, quads) {
            Vec4 a = reinterpret_cast<const Vec4*>(x)[i], b = reinterpret_cast<const Vec4*>(g)[i];
            #pragma unroll
            for (int k = 0; k < 4; k++) a.v[k] = ST(LD(b.v[k]) * unary_derivative(OP, LD(a.v[k])));
            reinterpret_cast<Vec4*>(out)[i] = a;
        }
        for (int64_t i = quads * 4 + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)blockDim.x * gridDim.x)
            out[i] = ST(LD(g[i]) * unary_derivative(OP, LD(x[i])));
    }

    #define UNARY_KERNELS(OP) \
    extern "C" __global__ void unary_fwd_##OP(const T* x, T* out, int64_t n, int vec) { unary_fwd_body<OP>(x, out, n, vec); } \
    extern "C" __global__ void unary_bwd_##OP(const T* x, const T* g, T* out, int64_t n, int vec) { unary_bwd_body<OP>(x, g, out, n, vec); }
    UNARY_KERNELS(0) UNARY_KERNELS(1) UNARY_KERNELS(2) UNARY_KERNELS(3) UNARY_KERNELS(4) UNARY_KERNELS(5) UNARY_KERNELS(6)
    UNARY_KERNELS(7) UNARY_KERNELS(8) UNARY_KERNELS(9) UNARY_KERNELS(10) UNARY_KERNELS(11) UNARY_KERNELS(12)
    UNARY_KERNELS(13)

    /// broadcast: 0 none, 1 scalar, 2 row (b[i % cols]), 3 column (b[i / cols]).
    /// `vec` (no broadcast, every pointer aligned): four elements a thread through `Vec4`, as the
    /// unary kernels (the gradient sums of autograd are this op).
    extern "C" __global__ void binary_fwd(int op, const T* a, const T* b, T* out, int64_t n, int broadcast, int64_t cols, int vec) {
        if (vec) {
            const int64_t quads = n / 4;
            GRID_STRIDE(i, quads) {
                Vec4 x = reinterpret_cast<const Vec4*>(a)[i];
                const Vec4 y = reinterpret_cast<const Vec4*>(b)[i];
                #pragma unroll
                for (int k = 0; k < 4; k++) x.v[k] = ST(binary_value(op, LD(x.v[k]), LD(y.v[k])));
                reinterpret_cast<Vec4*>(out)[i] = x;
            }
            for (int64_t i = quads * 4 + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)blockDim.x * gridDim.x)
                out[i] = ST(binary_value(op, LD(a[i]), LD(b[i])));
            return;
        }
        GRID_STRIDE(i, n) {
            int64_t j = broadcast == 0 ? i : broadcast == 1 ? 0 : broadcast == 2 ? i % cols : i / cols;
            out[i] = ST(binary_value(op, LD(a[i]), LD(b[j])));
        }
    }

    extern "C" __global__ void binary_scalar(int op, const T* a, double s, int scalar_first, T* out, int64_t n) {
        acc_t c = (acc_t)s;
        GRID_STRIDE(i, n) out[i] = ST(scalar_first ? binary_value(op, c, LD(a[i])) : binary_value(op, LD(a[i]), c));
    }

    extern "C" __global__ void causal_mask(const T* x, T* out, int64_t n, int64_t rows, int64_t cols, double value) {
        int64_t shift = cols - rows;
        T v = ST((acc_t)value);
        GRID_STRIDE(i, n) {
            int64_t j = i % cols, r = (i / cols) % rows;
            out[i] = j > r + shift ? v : x[i];
        }
    }

    extern "C" __global__ void fill(T* out, int64_t n, double value) {
        T v = ST((acc_t)value);
        GRID_STRIDE(i, n) out[i] = v;
    }

    extern "C" __global__ void arange(T* out, int64_t n, double start, double step) {
        GRID_STRIDE(i, n) out[i] = ST((acc_t)(start + (double)i * step));
    }
    """#
}
