/// Per-dtype indexing kernels (mirrors `Ops/Indexing.swift` and `CPU/CPUIndexing.swift`): the one-hot
/// matrix of a row scatter (`scatterAddRows` adds it as a GEMM), scatter-add of rows and along the
/// last axis (atomics: duplicate indices add in an unspecified order on the GPU), top-k (one thread
/// per row, insertion into a sorted buffer — k and the row are small in routing), and gather along
/// the last axis. The row gather is dtype-independent: `gather_rows_S` in `MovementKernels`.
enum IndexingKernels {
    static let source = #"""
    extern "C" __global__ void scatter_add_rows(const T* x, const int32_t* idx, T* out, int64_t n, int64_t cols, int64_t rows) {
        GRID_STRIDE(i, n * cols) {
            int64_t r = i / cols, j = i % cols;
            int32_t k = idx[r];
            if (k >= 0 && k < rows) atomic_add_T(out + (int64_t)k * cols + j, LD(x[i]));
        }
    }

    // out [n, rows], zeros: out[i, idx[i]] = 1 where 0 <= idx[i] < rows.
    extern "C" __global__ void one_hot_rows(const int32_t* idx, T* out, int64_t n, int64_t rows) {
        GRID_STRIDE(i, n) {
            int32_t k = idx[i];
            if (k >= 0 && k < rows) out[i * rows + k] = ST((acc_t)1);
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
    """#
}
