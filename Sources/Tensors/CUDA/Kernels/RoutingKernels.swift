/// The routing plan's kernels (`MoEBackend.routingPlan` on CUDA): a stable counting sort of the
/// `T*k` slots by expert, with no general sort and no atomics whose order could show in the result.
///
/// Both counting sorts (the capacity pass in priority order, the placement pass in slot order) use
/// one stable "rank within key" step over a sequence of slots cut into chunks of `chunk` ranks:
/// 1. `routing_rank_chunks`: one warp per chunk walks it 32 slots at a time; `__match_any_sync`
///    groups the lanes holding the same expert, so each slot's rank among the chunk's earlier slots of
///    its expert is `counter[e] + (earlier lanes with e)`; the warp owns its counters (shared memory,
///    or its row of `chunk_count` when N is too large), so no atomics and the order is the sequence's.
///    Writes `local_rank[s]` and the chunk's histogram `chunk_count[c][0..N)`.
/// 2. `routing_scan_columns`: one block per expert scans its column of `chunk_count` over the chunks
///    (exclusive, in place) and writes the expert's total.
/// 3. An elementwise pass: a slot's index within its expert is `chunk_count[c][e] + local_rank[s]`.
/// Work is O(T*k + chunks*N) per sort and memory `chunks*N` ints; the host picks `chunk` ≥ 4N so that
/// is at most T*k/4 (see `CUDABackend.routingPlan`).
///
/// Compiled into the dtype-independent module, after `MovementKernels` (it reads the slot mask of
/// any float dtype with `load_as_double`).
enum RoutingKernels {
    static let source = #"""
    /// routed[s] = expert[s], or -1 where the slot mask is negative; the sorted outputs start as -1
    /// (positions past the kept slots keep it). An index outside [-1, n) is a programming error, as on
    /// the CPU, where it stops the program: trap (the next sync reports a launch failure).
    extern "C" __global__ void routing_prepare(const int32_t* expert, const void* mask, int mask_dtype, int64_t slots, int n,
                                               int32_t* routed, int32_t* sorted_slot, int32_t* sorted_token, int32_t* sorted_expert) {
        GRID_STRIDE(s, slots) {
            int32_t e = expert[s];
            if (e < -1 || e >= n) __trap();
            if (mask != 0 && load_as_double(mask, s, mask_dtype) < 0.0) e = -1;
            routed[s] = e;
            sorted_slot[s] = -1;
            sorted_token[s] = -1;
            sorted_expert[s] = -1;
        }
    }

    /// The slot at priority rank r: r itself (slot order), or choice-major r = j*T + b -> s = b*k + j.
    __device__ __forceinline__ int64_t routing_slot_of_rank(int64_t r, int choice_major, int64_t tokens, int64_t k) {
        return choice_major ? (r % tokens) * k + r / tokens : r;
    }

    __device__ __forceinline__ int64_t routing_rank_of_slot(int64_t s, int choice_major, int64_t tokens, int64_t k) {
        return choice_major ? (s % k) * tokens + s / k : s;
    }

    /// One warp per chunk of `chunk` ranks: local_rank[s] = #{earlier ranks in the chunk with key[s]},
    /// chunk_count[c*n + e] = #{ranks in chunk c with key e}. Keys < 0 are skipped (local_rank unwritten).
    /// With use_shared, each warp counts in `n` ints of dynamic shared memory, else in its global row.
    extern "C" __global__ void routing_rank_chunks(const int32_t* key, int64_t slots, int64_t tokens, int64_t k, int choice_major,
                                                   int n, int64_t chunk, int64_t chunks, int use_shared,
                                                   int32_t* local_rank, int32_t* chunk_count) {
        extern __shared__ int32_t routing_counters[];
        int lane = threadIdx.x & 31;
        int64_t c = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
        if (c >= chunks) return;   // the whole warp leaves together
        int32_t* global_row = chunk_count + c * n;
        int32_t* row = use_shared ? routing_counters + (int64_t)(threadIdx.x >> 5) * n : global_row;
        for (int e = lane; e < n; e += 32) row[e] = 0;
        __syncwarp();
        int64_t begin = c * chunk, end = begin + chunk < slots ? begin + chunk : slots;
        unsigned below = (1u << lane) - 1u;
        for (int64_t r0 = begin; r0 < end; r0 += 32) {
            int64_t r = r0 + lane;
            int64_t s = r < end ? routing_slot_of_rank(r, choice_major, tokens, k) : 0;
            int32_t e = r < end ? key[s] : -1;
            unsigned peers = __match_any_sync(0xffffffffu, e);
            int32_t base = e >= 0 ? row[e] : 0;
            __syncwarp();
            if (e >= 0) {
                int before = __popc(peers & below);
                local_rank[s] = base + before;
                // The lowest lane of each group advances the counter for the whole group.
                if (before == 0) row[e] = base + __popc(peers);
            }
            __syncwarp();
        }
        if (use_shared) for (int e = lane; e < n; e += 32) global_row[e] = row[e];
    }

    /// Exclusive prefix sum of `v` over the block (any blockDim up to 1024); `*total` gets the block's sum.
    /// `shared` holds 33 ints; every thread of the block must call it.
    __device__ __forceinline__ int32_t routing_block_scan(int32_t v, int32_t* shared, int32_t* total) {
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
        int32_t x = v;
        for (int o = 1; o < 32; o <<= 1) {
            int32_t y = __shfl_up_sync(0xffffffffu, x, o);
            if (lane >= o) x += y;
        }
        __syncthreads();
        if (lane == 31 || threadIdx.x == blockDim.x - 1) shared[warp] = x;
        __syncthreads();
        if (warp == 0) {
            int32_t w = lane < warps ? shared[lane] : 0;
            for (int o = 1; o < 32; o <<= 1) {
                int32_t y = __shfl_up_sync(0xffffffffu, w, o);
                if (lane >= o) w += y;
            }
            if (lane < warps) shared[lane] = w;   // inclusive over warps
            if (lane == 31) shared[32] = w;
        }
        __syncthreads();
        int32_t warp_base = warp > 0 ? shared[warp - 1] : 0;
        *total = shared[32];
        return warp_base + x - v;
    }

    /// For each column e (one block each): out[r*cols + e] = Σ_{r' < r} in[r'*cols + e] over `rows`
    /// rows (in may equal out); total[e] (and total2[e] when non-null) = the column's sum.
    extern "C" __global__ void routing_scan_columns(const int32_t* in, int32_t* out, int64_t rows, int cols,
                                                    int32_t* total, int32_t* total2) {
        __shared__ int32_t shared[33];
        int e = blockIdx.x;
        int32_t carry = 0;
        for (int64_t r0 = 0; r0 < rows; r0 += blockDim.x) {
            int64_t r = r0 + threadIdx.x;
            int32_t v = r < rows ? in[r * cols + e] : 0;
            int32_t tile;
            int32_t before = routing_block_scan(v, shared, &tile);
            if (r < rows) out[r * cols + e] = carry + before;
            carry += tile;
        }
        if (threadIdx.x == 0) {
            if (total != 0) total[e] = carry;
            if (total2 != 0) total2[e] = carry;
        }
    }

    /// Capacity: a routed slot whose index within its expert, in priority order, plus the seats
    /// `seat_offset[j][e]` taken before its choice j elsewhere (null: none), is ≥ capacity is dropped.
    extern "C" __global__ void routing_apply_capacity(int32_t* kept, const int32_t* local_rank, const int32_t* chunk_offset,
                                                      const int32_t* seat_offset, int64_t slots, int64_t tokens, int64_t k,
                                                      int choice_major, int n, int64_t chunk, int64_t capacity) {
        GRID_STRIDE(s, slots) {
            int32_t e = kept[s];
            if (e < 0) continue;
            int64_t r = routing_rank_of_slot(s, choice_major, tokens, k);
            int64_t index = (int64_t)chunk_offset[(r / chunk) * n + e] + local_rank[s];
            if (seat_offset != 0) index += seat_offset[(s % k) * n + e];
            if (index >= capacity) kept[s] = -1;
        }
    }

    /// Placement in slot order: p = offset[e] + #{s' < s : kept[s'] == e}, and the inverse maps at p.
    extern "C" __global__ void routing_place(const int32_t* kept, const int32_t* local_rank, const int32_t* chunk_offset,
                                             const int32_t* expert_offset, int64_t slots, int64_t k, int n, int64_t chunk,
                                             int32_t* slot_position, int32_t* sorted_slot, int32_t* sorted_token, int32_t* sorted_expert) {
        GRID_STRIDE(s, slots) {
            int32_t e = kept[s];
            if (e < 0) { slot_position[s] = -1; continue; }
            int32_t p = expert_offset[e] + chunk_offset[(s / chunk) * n + e] + local_rank[s];
            slot_position[s] = p;
            sorted_slot[p] = (int32_t)s;
            sorted_token[p] = (int32_t)(s / k);
            sorted_expert[p] = e;
        }
    }

    /// The grouped GEMM kernels' table (`CUDAGroupedKernel.GroupTable`) from the group sizes on the
    /// device, so that no one waits for them: `table[0..E]` the offsets (the exclusive scan of
    /// `counts`, then their sum), then `(expert, first row)` for each of `max_tiles` row tiles of
    /// `tile_rows` rows, expert by expert, and `(-1, 0)` past the last. One block; the offsets and
    /// each expert's first tile in `2·(E + 1)` ints of dynamic shared memory.
    extern "C" __global__ void grouped_tile_table(const int32_t* counts, int experts, int tile_rows, int max_tiles, int32_t* table) {
        extern __shared__ int32_t gt_shared[];
        int32_t* offset = gt_shared;
        int32_t* first_tile = gt_shared + experts + 1;
        if (threadIdx.x == 0) {
            int32_t rows = 0, tiles = 0;
            for (int g = 0; g < experts; g++) {
                offset[g] = rows; first_tile[g] = tiles;
                rows += counts[g]; tiles += (counts[g] + tile_rows - 1) / tile_rows;
            }
            offset[experts] = rows; first_tile[experts] = tiles;
        }
        __syncthreads();
        for (int g = threadIdx.x; g <= experts; g += blockDim.x) table[g] = offset[g];
        int32_t* tile = table + experts + 1;
        for (int t = threadIdx.x; t < max_tiles; t += blockDim.x) {
            if (t >= first_tile[experts]) { tile[2 * t] = -1; tile[2 * t + 1] = 0; continue; }
            // The last expert whose tiles start at or before t: it holds t (an expert without rows
            // starts where the next one does, so it is never the last).
            int lo = 0, hi = experts - 1;
            while (lo < hi) {
                int mid = (lo + hi + 1) / 2;
                if (first_tile[mid] <= t) lo = mid; else hi = mid - 1;
            }
            tile[2 * t] = lo;
            tile[2 * t + 1] = offset[lo] + (t - first_tile[lo]) * tile_rows;
        }
    }

    /// The grouped kernels' weight-gradient work (`CUDABackend.WeightUnits`) from the group offsets,
    /// experts taken in index order. A unit is an expert's rows, or, for an expert of more than
    /// `chunk` rows, one of `n = ⌈rows / chunk⌉` chunks of them as equal as may be, whose tiles leave
    /// float32 partials in slots `slot + tile` for `grouped_weight_finish` (wgmma) or
    /// `grouped_weight_sum` (the others): `units` holds
    /// `(expert, first row, end row, slot or -1)` longest first (ties in expert, then chunk, order;
    /// `(-1, 0, 0, -1)` past the last), `splits` each split expert's `(expert, first slot, number
    /// of chunks with partials)` (`(-1, 0, 0)` past the last). With `in_place` (a float32 output,
    /// which a partial is already), an expert's first chunk writes its tiles to the output itself
    /// (slot -1) and the sum starts from them, so a split takes one chunk's slots fewer. An expert
    /// that would overrun `max_units`, `max_splits` or `max_slots` stays whole. One block; `scratch`
    /// (4 · `max_units` ints) holds the units in expert order while they are ranked.
    extern "C" __global__ void grouped_weight_units(const int32_t* offsets, int experts, int chunk, int per_expert, int max_units,
                                                    int max_splits, int max_slots, int in_place, int32_t* units, int32_t* splits,
                                                    int32_t* scratch) {
        __shared__ int32_t unit_count;
        if (threadIdx.x == 0) {
            int u = 0, s = 0, slot = 0;
            for (int g = 0; g < experts; g++) {
                const int32_t first = offsets[g], end = offsets[g + 1], rows = end - first;
                const int n = (rows + chunk - 1) / chunk;
                // Room for this expert's chunks and one unit for each expert after it.
                const int partials = n - in_place;
                const bool split = n > 1 && s < max_splits && u + n + (experts - 1 - g) <= max_units
                                   && slot + partials * per_expert <= max_slots;
                if (!split) {
                    scratch[4 * u] = g; scratch[4 * u + 1] = first; scratch[4 * u + 2] = end; scratch[4 * u + 3] = -1;
                    u++;
                    continue;
                }
                splits[3 * s] = g; splits[3 * s + 1] = slot; splits[3 * s + 2] = partials;
                s++;
                for (int j = 0; j < n; j++, u++) {
                    const int32_t from = first + (int32_t)((int64_t)j * rows / n), to = first + (int32_t)((int64_t)(j + 1) * rows / n);
                    const int p = j - in_place;
                    scratch[4 * u] = g; scratch[4 * u + 1] = from; scratch[4 * u + 2] = to; scratch[4 * u + 3] = p < 0 ? -1 : slot + p * per_expert;
                }
                slot += partials * per_expert;
            }
            for (; s < max_splits; s++) { splits[3 * s] = -1; splits[3 * s + 1] = 0; splits[3 * s + 2] = 0; }
            unit_count = u;
        }
        __syncthreads();
        const int count = unit_count;
        for (int u = threadIdx.x; u < max_units; u += blockDim.x) {
            if (u >= count) { units[4 * u] = -1; units[4 * u + 1] = 0; units[4 * u + 2] = 0; units[4 * u + 3] = -1; continue; }
            const int32_t length = scratch[4 * u + 2] - scratch[4 * u + 1];
            int rank = 0;
            for (int v = 0; v < count; v++) {
                const int32_t other = scratch[4 * v + 2] - scratch[4 * v + 1];
                rank += other > length || (other == length && v < u);
            }
            for (int i = 0; i < 4; i++) units[4 * rank + i] = scratch[4 * u + i];
        }
    }
    """#
}
