/// The MoE permutation's row kernels: the summing gather (`Backend.gatherSumRows`: the combine of the
/// `k` expert outputs of each token, and the backward of the token permutation), the grouped bias
/// (`MoEBackend.addIndexedRows`) and its gradient (`groupedColumnSums`), and the combine's backward
/// (`MoEBackend.combineBackward`).
///
/// Every output element is summed by one thread (or, for the dots, one warp) in a fixed order with
/// no atomics, so results are bit-reproducible for every `k`. They are bandwidth-bound: the `_vec`
/// forms move 16 bytes per load (8 bfloat16, 4 float32) when the host has checked that the row
/// length and every base address allow it; each vector lane sums exactly as the scalar form does, so
/// both give the same bits.
enum DispatchKernels {
    static let source = #"""
    #define VEC ((int)(16 / sizeof(T)))
    struct alignas(16) vec_t { T v[16 / sizeof(T)]; };

    extern "C" __global__ void gather_sum_rows(const T* x, const int32_t* idx, const T* w, T* out,
                                               int64_t tokens, int64_t cols, int64_t k, int64_t rows) {
        GRID_STRIDE(i, tokens * cols) {
            int64_t t = i / cols, c = i % cols;
            acc_t sum = (acc_t)0;
            for (int64_t j = 0; j < k; j++) {
                int32_t r = idx[t * k + j];
                if (r < 0 || r >= rows) continue;
                acc_t weight = w ? LD(w[t * k + j]) : (acc_t)1;
                sum += weight * LD(x[(int64_t)r * cols + c]);
            }
            out[i] = ST(sum);
        }
    }

    extern "C" __global__ void gather_sum_rows_vec(const T* x, const int32_t* idx, const T* w, T* out,
                                                   int64_t tokens, int64_t cols, int64_t k, int64_t rows) {
        const int64_t per_row = cols / VEC;
        GRID_STRIDE(i, tokens * per_row) {
            int64_t t = i / per_row, c = (i % per_row) * VEC;
            acc_t sum[VEC];
            #pragma unroll
            for (int v = 0; v < VEC; v++) sum[v] = (acc_t)0;
            for (int64_t j = 0; j < k; j++) {
                int32_t r = idx[t * k + j];
                if (r < 0 || r >= rows) continue;
                acc_t weight = w ? LD(w[t * k + j]) : (acc_t)1;
                vec_t a = *(const vec_t*)(x + (int64_t)r * cols + c);
                #pragma unroll
                for (int v = 0; v < VEC; v++) sum[v] += weight * LD(a.v[v]);
            }
            vec_t o;
            #pragma unroll
            for (int v = 0; v < VEC; v++) o.v[v] = ST(sum[v]);
            *(vec_t*)(out + t * cols + c) = o;
        }
    }

    /// The column sums of each row tile of a grouping, the first of two deterministic passes of the
    /// grouped column sums (a bias gradient): tile t covers rows tiles[2t+1] ... of expert tiles[2t]
    /// up to `tile_rows` or its expert's end (expert -1: past the last tile); partials[t*cols + c].
    /// One thread a column, a block row (y) a tile at a time: many blocks read at once, where one
    /// block an expert left HBM mostly idle.
    extern "C" __global__ void grouped_column_partials(const T* x, const int32_t* offsets, const int32_t* tiles, acc_t* partials,
                                                       int64_t cols, int64_t row_tiles, int tile_rows) {
        const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (c >= cols) return;
        for (int64_t t = blockIdx.y; t < row_tiles; t += gridDim.y) {
            const int g = tiles[2 * t];
            if (g < 0) return;
            const int64_t r0 = tiles[2 * t + 1], r1 = min(r0 + (int64_t)tile_rows, (int64_t)offsets[g + 1]);
            acc_t sum = (acc_t)0;
            #pragma unroll 8
            for (int64_t r = r0; r < r1; r++) sum += LD(x[r * cols + c]);
            partials[t * cols + c] = sum;
        }
    }

    /// out[e*cols + c] = the partials of expert e's tiles added in a fixed order (0 for an expert
    /// without rows): the second pass of `grouped_column_partials`. Block (x, e): 32 columns, 8
    /// threads a column each adding every 8th of the expert's tiles, then thread row 0 adds the 8 in
    /// order (one thread a column walked all of an expert's tiles: too few loads in flight).
    extern "C" __global__ void grouped_column_finish(const acc_t* partials, const int32_t* tiles, T* out, int64_t cols, int64_t row_tiles) {
        __shared__ acc_t part[8][33];
        const int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x, e = blockIdx.y;
        // Tiles run expert by expert (then -1): the first of expert e by binary search.
        int64_t lo = 0, hi = row_tiles;
        while (lo < hi) {
            const int64_t mid = (lo + hi) / 2, g = tiles[2 * mid];
            if (g >= 0 && g < e) lo = mid + 1; else hi = mid;
        }
        acc_t sum = (acc_t)0;
        if (c < cols)
            for (int64_t t = lo + threadIdx.y; t < row_tiles && tiles[2 * t] == e; t += 8) sum += partials[t * cols + c];
        part[threadIdx.y][threadIdx.x] = sum;
        __syncthreads();
        if (threadIdx.y == 0 && c < cols) {
            acc_t total = (acc_t)0;
            for (int k = 0; k < 8; k++) total += part[k][threadIdx.x];
            out[e * cols + c] = ST(total);
        }
    }

    /// out[r] += table[idx[r]] in place; a negative index adds nothing.
    extern "C" __global__ void add_indexed_rows(const T* table, const int32_t* idx, T* out, int64_t n, int64_t cols, int64_t rows) {
        GRID_STRIDE(i, n * cols) {
            int32_t k = idx[i / cols];
            if (k >= 0 && k < rows) out[i] = ST(LD(out[i]) + LD(table[(int64_t)k * cols + i % cols]));
        }
    }

    extern "C" __global__ void add_indexed_rows_vec(const T* table, const int32_t* idx, T* out, int64_t n, int64_t cols, int64_t rows) {
        const int64_t per_row = cols / VEC;
        GRID_STRIDE(i, n * per_row) {
            int64_t r = i / per_row, c = (i % per_row) * VEC;
            int32_t k = idx[r];
            if (k < 0 || k >= rows) continue;
            vec_t a = *(const vec_t*)(out + r * cols + c), b = *(const vec_t*)(table + (int64_t)k * cols + c);
            #pragma unroll
            for (int v = 0; v < VEC; v++) a.v[v] = ST(LD(a.v[v]) + LD(b.v[v]));
            *(vec_t*)(out + r * cols + c) = a;
        }
    }

    /// The combine's backward, one warp a slot s = t·k + j with row r = idx[s] (either output may
    /// be null): gy[r] = w[s]·g[t], and dots[s] = ⟨y[r], g[t]⟩ (0 where r < 0). Warp s also zeroes
    /// row s of gy when no slot names it (slot_of_row[s] < 0: the rows past the kept ones). A
    /// token's k slots run in one block, so its row of g is read from memory once for both
    /// outputs (two kernels read it, and y, once each: perf-notes, change 31).
    extern "C" __global__ void combine_backward(const T* y, const int32_t* idx, const int32_t* slot_of_row, const T* g, const T* w,
                                                T* gy, T* dots, int64_t slots, int64_t k, int64_t cols, int64_t rows, int vectorized) {
        const int64_t s = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        if (s >= slots) return;
        const int lane = threadIdx.x & 31;
        const int32_t r = idx[s];
        const T* const gt = g + (s / k) * cols;
        acc_t sum = (acc_t)0;
        if (r >= 0 && r < rows) {
            const T* const yr = y + (int64_t)r * cols;
            T* const out = gy ? gy + (int64_t)r * cols : nullptr;
            const acc_t weight = out ? LD(w[s]) : (acc_t)0;
            if (vectorized) {
                for (int64_t c = (int64_t)lane * VEC; c < cols; c += 32 * VEC) {
                    const vec_t vg = *(const vec_t*)(gt + c);
                    if (dots) {
                        const vec_t vy = *(const vec_t*)(yr + c);
                        #pragma unroll
                        for (int v = 0; v < VEC; v++) sum += LD(vy.v[v]) * LD(vg.v[v]);
                    }
                    if (out) {
                        vec_t o;
                        #pragma unroll
                        for (int v = 0; v < VEC; v++) o.v[v] = ST(weight * LD(vg.v[v]));
                        *(vec_t*)(out + c) = o;
                    }
                }
            } else {
                for (int64_t c = lane; c < cols; c += 32) {
                    if (dots) sum += LD(yr[c]) * LD(gt[c]);
                    if (out) out[c] = ST(weight * LD(gt[c]));
                }
            }
        }
        if (dots) {
            sum = warp_sum(sum);
            if (lane == 0) dots[s] = ST(sum);
        }
        if (gy && s < rows && slot_of_row[s] < 0)
            for (int64_t c = lane; c < cols; c += 32) gy[s * cols + c] = ST((acc_t)0);
    }
    """#
}
