/// Reductions (mirrors `Ops/Reductions.swift`): sums and maxima over the last axis, one block per
/// row; and column sums (`sumRows`, and the layer-norm parameter gradients Σ g·x̂, Σ g) in two
/// deterministic stages, launched by `CUDABackend.columnSums`.
enum ReductionKernels {
    static let source = #"""
    extern "C" __global__ void reduce_last(int op, const T* x, T* out, int64_t cols) {
        __shared__ acc_t sh[32];
        const T* p = x + (int64_t)blockIdx.x * cols;
        acc_t v = op == 0 ? (acc_t)0 : (acc_t)FM_NEG_INF;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            acc_t e = LD(p[j]);
            v = op == 0 ? v + e : fmax(v, e);
        }
        v = op == 0 ? block_sum(v, sh) : block_max(v, sh);
        if (threadIdx.x == 0) out[blockIdx.x] = ST(v);
    }

    /// A long row in two deterministic stages (`CUDABackend.reduceLastAxis` picks them for few long
    /// rows, which one block per row would leave on a handful of SMs): block (part, row) reduces
    /// columns [part·chunk, (part+1)·chunk) into partial[row·parts + part], kept in the accumulator
    /// type; then one thread per row combines its parts in order.
    extern "C" __global__ void reduce_last_partials(int op, const T* x, acc_t* partial, int64_t cols, int64_t chunk) {
        __shared__ acc_t sh[32];
        const int64_t row = blockIdx.y, begin = (int64_t)blockIdx.x * chunk;
        const int64_t end = begin + chunk < cols ? begin + chunk : cols;
        const T* p = x + row * cols;
        acc_t v = op == 0 ? (acc_t)0 : (acc_t)FM_NEG_INF;
        for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
            acc_t e = LD(p[j]);
            v = op == 0 ? v + e : fmax(v, e);
        }
        v = op == 0 ? block_sum(v, sh) : block_max(v, sh);
        if (threadIdx.x == 0) partial[row * gridDim.x + blockIdx.x] = v;
    }

    extern "C" __global__ void reduce_last_finish(int op, const acc_t* partial, T* out, int64_t rows, int64_t parts) {
        GRID_STRIDE(r, rows) {
            acc_t v = partial[r * parts];
            for (int64_t k = 1; k < parts; k++) v = op == 0 ? v + partial[r * parts + k] : fmax(v, partial[r * parts + k]);
            out[r] = ST(v);
        }
    }

    /// Σ x² over many tensors (`CUDABackend.sumOfSquares`): `table` holds (address, count) of each
    /// chunk of at most 65536 elements; block c writes partial[c]; then one block adds the partials
    /// (each thread a strided run in order, then the fixed tree of `block_sum`): deterministic.
    extern "C" __global__ void sum_squares_chunks(const int64_t* table, acc_t* partial) {
        __shared__ acc_t sh[32];
        const T* p = (const T*)table[2 * blockIdx.x];
        const int64_t n = table[2 * blockIdx.x + 1];
        acc_t v = 0;
        int64_t done = 0;
    #if defined(FM_F32)
        // Float32 (the gradients of mixed precision) four values a thread in 16-byte loads where the
        // chunk's address allows: one a thread read a quarter of the bandwidth (perf-notes, change 32).
        if (((uint64_t)p & 15) == 0) {
            done = n / 4 * 4;
            for (int64_t i = threadIdx.x; i < n / 4; i += blockDim.x) {
                const float4 q = ((const float4*)p)[i];
                v += q.x * q.x; v += q.y * q.y; v += q.z * q.z; v += q.w * q.w;
            }
        }
    #endif
        for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) { acc_t e = LD(p[i]); v += e * e; }
        v = block_sum(v, sh);
        if (threadIdx.x == 0) partial[blockIdx.x] = v;
    }

    extern "C" __global__ void sum_squares_finish(const acc_t* partial, int64_t n, acc_t* out) {
        __shared__ acc_t sh[32];
        acc_t v = 0;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += partial[i];
        v = block_sum(v, sh);
        if (threadIdx.x == 0) out[0] = v;
    }

    /// x *= factor over the chunks of `table` (as `sum_squares_chunks`), in the accumulation type.
    extern "C" __global__ void scale_chunks(const int64_t* table, double factor) {
        T* p = (T*)table[2 * blockIdx.x];
        const int64_t n = table[2 * blockIdx.x + 1];
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) p[i] = ST(LD(p[i]) * (acc_t)factor);
    }

    /// Column sums in two deterministic stages: a [chunks, cols] partial-sum pass where block (32, 8)
    /// owns 32 columns × one chunk of rows, then `column_finish` adds the chunks.
    /// `mode` 0: Σ x; 1: layer-norm parameter gradients Σ g·x̂ (into p0) and Σ g (into p1).
    extern "C" __global__ void column_partials(const T* x, const T* g, const stat_t* mean, const stat_t* rstd,
                                               acc_t* p0, acc_t* p1, int64_t rows, int64_t cols, int64_t chunk, int mode) {
        __shared__ acc_t s0[8][33], s1[8][33];
        int64_t j = (int64_t)blockIdx.x * 32 + threadIdx.x;
        int64_t r0 = (int64_t)blockIdx.y * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
        acc_t a0 = 0, a1 = 0;
        if (j < cols) {
            for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
                if (mode == 0) {
                    a0 += LD(x[r * cols + j]);
                } else {
                    acc_t gv = LD(g[r * cols + j]);
                    a0 += gv * (LD(x[r * cols + j]) - (acc_t)mean[r]) * (acc_t)rstd[r];
                    a1 += gv;
                }
            }
        }
        s0[threadIdx.y][threadIdx.x] = a0; s1[threadIdx.y][threadIdx.x] = a1;
        __syncthreads();
        if (threadIdx.y == 0 && j < cols) {
            for (int k = 1; k < 8; k++) { a0 += s0[k][threadIdx.x]; a1 += s1[k][threadIdx.x]; }
            p0[blockIdx.y * cols + j] = a0;
            if (mode == 1) p1[blockIdx.y * cols + j] = a1;
        }
    }

    /// GELU (tanh)'s backward in place, g ← g·gelu'(x) rounded as `unary_bwd` rounds it, and the
    /// column partial sums of the result as `column_partials` mode 0 adds them (the same rows in the
    /// same order, so the sums are the unfused pair's to the bit): the bias gradient of a GELU layer
    /// in one pass over its gradient instead of two. Block (32, 8) as `column_partials`, each thread
    /// owning one 16-byte vector of adjacent columns: `cols` a multiple of COLUMN_VECTOR, `x` and
    /// `g` 16-byte aligned.
    #define COLUMN_VECTOR (16 / (int)sizeof(T))
    struct alignas(16) ColumnVector { T v[COLUMN_VECTOR]; };
    extern "C" __global__ void gelu_bwd_column_partials(const T* x, T* g, acc_t* p0, int64_t rows, int64_t cols, int64_t chunk) {
        __shared__ acc_t s[8][32 * COLUMN_VECTOR];
        const int64_t j = ((int64_t)blockIdx.x * 32 + threadIdx.x) * COLUMN_VECTOR;
        const int64_t r0 = (int64_t)blockIdx.y * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
        acc_t a[COLUMN_VECTOR];
        #pragma unroll
        for (int k = 0; k < COLUMN_VECTOR; k++) a[k] = 0;
        if (j < cols) {
            for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
                const ColumnVector xv = *(const ColumnVector*)(x + r * cols + j);
                ColumnVector gv = *(const ColumnVector*)(g + r * cols + j);
                #pragma unroll
                for (int k = 0; k < COLUMN_VECTOR; k++) {
                    gv.v[k] = ST(LD(gv.v[k]) * unary_derivative(8, LD(xv.v[k])));   // 8: UnaryOp.geluTanh
                    a[k] += LD(gv.v[k]);
                }
                *(ColumnVector*)(g + r * cols + j) = gv;
            }
        }
        #pragma unroll
        for (int k = 0; k < COLUMN_VECTOR; k++) s[threadIdx.y][threadIdx.x * COLUMN_VECTOR + k] = a[k];
        __syncthreads();
        if (threadIdx.y == 0 && j < cols) {
            #pragma unroll
            for (int k = 0; k < COLUMN_VECTOR; k++) {
                for (int y = 1; y < 8; y++) a[k] += s[y][threadIdx.x * COLUMN_VECTOR + k];
                p0[blockIdx.y * cols + j + k] = a[k];
            }
        }
    }

    /// The second stage of the column sums: block (32, 32) owns 32 columns, thread y adds chunks
    /// y, y + 32, ... in order and thread 0 of each column the 32 lanes in order, a fixed order for
    /// given rows. (One thread a column walking every chunk took 119 µs for [131072, 1408]'s 1024
    /// chunks, ncu, H200: a chain of dependent loads.)
    extern "C" __global__ void column_finish(const acc_t* p0, const acc_t* p1, T* out0, T* out1, int64_t chunks, int64_t cols) {
        __shared__ acc_t s0[32][33], s1[32][33];
        const int64_t j = (int64_t)blockIdx.x * 32 + threadIdx.x;
        acc_t a0 = 0, a1 = 0;
        if (j < cols) {
            for (int64_t c = threadIdx.y; c < chunks; c += 32) { a0 += p0[c * cols + j]; if (p1) a1 += p1[c * cols + j]; }
        }
        s0[threadIdx.y][threadIdx.x] = a0; s1[threadIdx.y][threadIdx.x] = a1;
        __syncthreads();
        if (threadIdx.y == 0 && j < cols) {
            for (int k = 1; k < 32; k++) { a0 += s0[k][threadIdx.x]; a1 += s1[k][threadIdx.x]; }
            if (out0) out0[j] = ST(a0);
            if (out1) out1[j] = ST(a1);
        }
    }
    """#
}
