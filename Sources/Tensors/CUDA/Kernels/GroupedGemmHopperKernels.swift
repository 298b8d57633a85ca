/// The bfloat16 grouped GEMMs of `GroupedGemmKernels` on Hopper's warpgroup MMA (`wgmma`, sm_90a):
/// the same three products, group table, epilogues and arguments, so it replaces the `mma.sync`
/// kernel on a compute capability 9.x device. Its launch differs: persistent blocks, one an SM,
/// walk the tiles of the grid the other families launch (columns fastest, then row tiles; for the
/// weight gradient, then the units of `grouped_weight_units` instead of the experts), given as two
/// arguments more (`tilesY`, `tilesZ`), and the operands are read through two tensor maps
/// (`TensorMap`) after those.
///
/// Why persistent and warp-specialised: with one block a tile, a tile's pipeline fill and its
/// epilogue left the tensor cores idle, and at short K (512–1024, 8–16 K tiles) that halved the
/// rate against cuBLAS (perf-notes, change 19). Here a block has four warpgroups:
/// - the producer (warpgroup 0, few registers) copies the K tiles of the block's tiles, one after
///   the other, into a ring of `stages` shared-memory stages, never waiting for its own copies,
///   only for a stage to be *empty*: one thread copies each operand's tile as one or two boxes of a
///   tensor with the tensor memory accelerator (TMA: `cp.async.bulk.tensor`, counted in bytes on
///   the stage's *full* barrier). (With 128 threads' `cp.async` copies, the copies and the
///   epilogue's loads and stores contended for the SM's load/store path: perf-notes, changes 26-28.)
///   A weight gradient's K runs over an expert's rows, where a box does not stop: the MMA
///   warpgroup zeroes the rows of the expert's last K tile that belong to the next one.
/// - the MMA warpgroup (1, most registers) computes the tiles one after the other, a whole 128×128
///   tile each (two `wgmma.m64n128k16` a 16-wide K step, 128 float32 accumulators a thread), and
///   stages each in bfloat16 (what the epilogue's first step rounds to) in one of two buffers;
/// - two epilogue warpgroups (2 and 3) take the staged tiles in turn and write them out, epilogue
///   applied, so an epilogue may take two tiles' MMAs long before the tensor cores wait for it. (With
///   two consumers doing both, CUTLASS's "ping-pong", an epilogue at short K was as long as the
///   other consumer's MMAs: change 24.)
/// Barriers: `full[s]` counts the producer's one arrival and the bytes it expects, `empty[s]` the
/// MMA warpgroup's 128 threads, each arriving once the MMAs that read the stage are done (one K tile's MMAs
/// stay in flight). The ring position `p` counts K tiles over the block's tiles; stage `p % stages`
/// is filled for the `p / stages`-th time, so its barriers' phase parity is `(p / stages) & 1`. A
/// buffer is *staged* by the MMA warpgroup and *drained* by its epilogue warpgroup. A wait names a
/// phase only by its parity, so no waiter may run two phases ahead: one MMA warpgroup consumes the
/// stages in order, and it stages a buffer only after that buffer was drained.
///
/// Operand tiles are read by the tensor cores straight from shared memory through matrix descriptors,
/// in the 128-byte swizzled layout: rows of 128 bytes whose 16-byte chunk `c` is stored at chunk
/// `c ^ (row % 8)`, in 1024-byte-aligned groups of 8 rows, so the eight rows the tensor cores read
/// together spread over all banks. (Without the swizzle, wgmma ran at 110–122 TFLOP/s on an H200.)
/// A descriptor gives the start, the stride byte offset (between 8-row groups: 1024) and the leading
/// byte offset (M- or N-contiguous: between blocks of 64 values along M or N); the transpose flag of
/// the instruction says which kind the operand is. Per stage and operand, 128 rows (M or N) by 64 K
/// values:
/// - K-contiguous: row `r` holds its 64 K values at `r·128`; 16 more of K start 32 bytes on;
/// - M- or N-contiguous: K row `k` of the 64 values of block `r/64` at `(r/64)·8192 + k·128`
///   (leading offset 8192); 16 more of K start 2048 bytes on.
/// A tensor copy with the 128-byte swizzle lands a box of 64-value rows in exactly this layout (from
/// a 1024-byte aligned address): 128 rows by 64 of K for a K-contiguous operand, two boxes of 64 K
/// rows by 64 for an M- or N-contiguous one. A staged tile's rows are 136 values (against bank
/// conflicts); the epilogue writes 16-byte vectors of 8 columns.
enum GroupedGemmHopperKernels {
    /// Stages of the shared-memory ring, and K tiles whose MMAs are left running while the next
    /// tile's are issued (two measured no faster on the fine rows and the medium layer).
    static let stages = 4, mmasInFlight = 1
    /// A producer, an MMA and two epilogue warpgroups.
    static let threads = 512
    /// Registers a thread of each role keeps (`setmaxnreg`; ptxas allocates each role's code within
    /// them). A block is launched with 128 a thread (65,536 / 512), and the MMA warpgroup's
    /// `setmaxnreg.inc` waits until the others' `dec` have freed enough: all must fit in 512 × 128
    /// (`registersFit`), or the block hangs. 128 × (64 + 216) + 256 × 112 = 64,512.
    static let producerRegisters = 64, mmaRegisters = 216, epilogueRegisters = 112
    static var registersFit: Bool {
        128 * (producerRegisters + mmaRegisters) + 256 * epilogueRegisters <= threads * (65536 / threads / 8 * 8)
    }
    /// Dynamic shared memory of a block: room to align to the swizzle's 1024 bytes, the stages' two
    /// 128×64 bfloat16 tiles each, two staging buffers (a tile's 128 rows of 136 bfloat16 and its
    /// column sums' partials, 8×128 float32), a full and an empty barrier a stage and a staged and a
    /// drained barrier a buffer.
    static let sharedMemoryBytes = 1024 + stages * 2 * 128 * 64 * 2 + 2 * (128 * 136 * 2 + 8 * 128 * 4) + (2 * stages + 4) * 8

    static let source = #"""
    #if defined(FM_BF16)
    #define GH_BM 128
    #define GH_BN 128
    #define GH_BK 64
    #define GH_STAGES \#(stages)
    #define GH_IN_FLIGHT \#(mmasInFlight)       // K tiles whose MMAs a consumer leaves running
    #define GH_TILE_BYTES (128 * GH_BK * 2)    // one operand's tile of a stage
    #define GH_CSTRIDE (GH_BN + 8)             // a staged bfloat16 output row: 8 values of padding against bank conflicts
    #define GH_STAGED_BYTES (GH_BM * GH_CSTRIDE * 2)
    #define GH_PARTIAL_BYTES (8 * GH_BM * 4)
    #define GH_PART_FLOATS (GH_BM * GH_BN + 8 * GH_BM)   // a weight-gradient partial: the tile, then its column sums' partials

    /// A shared-memory matrix descriptor for the 128-byte swizzle (layout type 1, bits 62-63): start
    /// address, then the leading and stride byte distances, each in 16-byte units.
    __device__ __forceinline__ uint64_t gh_descriptor(uint32_t address, uint32_t leading, uint32_t stride) {
        return (uint64_t)((address & 0x3FFFF) >> 4) | ((uint64_t)(leading >> 4) << 16) | ((uint64_t)(stride >> 4) << 32) | (1ull << 62);
    }
    \#(wgmmaHelper)
    /// Two float32 values rounded to bfloat16 in one instruction, `lo` in the low half: what two calls
    /// of `float_to_bf16` give for every value but a NaN (whose payload this does not keep). The
    /// software rounding cost a consumer's epilogue ~5 instructions a value.
    __device__ __forceinline__ uint32_t gh_pack_bf16x2(float lo, float hi) {
        uint32_t r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    }
    struct alignas(16) GHWords { uint32_t w[4]; };
    /// Keeps the compiler from moving reads of an accumulator above the wait for the MMAs writing it.
    __device__ __forceinline__ void gh_fence_accumulator(float& r) { asm volatile("" : "+f"(r) :: "memory"); }

    /// The shared-memory barriers (`mbarrier`): set up for `count` arrivals a phase; wait until the
    /// phase of parity `parity` is complete; arrive.
    __device__ __forceinline__ void gh_bar_init(uint32_t bar, int count) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(count) : "memory");
    }
    __device__ __forceinline__ void gh_bar_wait(uint32_t bar, uint32_t parity) {
        uint32_t done = 0;
        do {
            asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                         : "=r"(done) : "r"(bar), "r"(parity) : "memory");
        } while (!done);
    }
    __device__ __forceinline__ void gh_bar_arrive(uint32_t bar) {
        asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" :: "r"(bar) : "memory");
    }
    /// A barrier among the 128 threads of one warpgroup (hardware barrier `id`, 1 or more: 0 is `__syncthreads`).
    __device__ __forceinline__ void gh_sync_warpgroup(int id) { asm volatile("bar.sync %0, 128;\n" :: "r"(id) : "memory"); }
    /// Arrives on `bar` and expects `bytes` more of asynchronous copies before its phase completes.
    __device__ __forceinline__ void gh_bar_expect(uint32_t bar, uint32_t bytes) {
        asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n" :: "r"(bar), "r"(bytes) : "memory");
    }

    /// A `CUtensorMap` (`TensorMap` on the host), passed as a `__grid_constant__` parameter.
    struct alignas(64) GHTensorMap { unsigned long long opaque[16]; };
    /// Copies the box of `map` at element coordinates (`x` contiguous, `y`, `z`) to shared address
    /// `dst` (1024-byte aligned, so the 128-byte swizzle lands as the descriptors read it), out-of-range
    /// elements as zeros, and counts its bytes on `bar`.
    __device__ __forceinline__ void gh_tma_2d(uint32_t dst, const GHTensorMap* map, int x, int y, uint32_t bar) {
        asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
                     :: "r"(dst), "l"((uint64_t)map), "r"(x), "r"(y), "r"(bar) : "memory");
    }
    __device__ __forceinline__ void gh_tma_3d(uint32_t dst, const GHTensorMap* map, int x, int y, int z, uint32_t bar) {
        asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n"
                     :: "r"(dst), "l"((uint64_t)map), "r"(x), "r"(y), "r"(z), "r"(bar) : "memory");
    }

    /// Tile `L` of the launch's tiles (`tilesY` rows of `columnTiles` columns, then `tilesZ` such
    /// planes): its problem, first column and, for a weight gradient, its partial's slot (`part`,
    /// -1 for a tile written out whole); false where there is no tile.
    ///
    /// A weight gradient's tile takes time in proportion to its expert's rows, and block `b` walks
    /// tiles `b`, `b + G`, ... (G blocks): taken expert by expert, a block that drew two tiles of a
    /// crowded expert set the product's time (in training's first steps, before the router
    /// balances, 2-3.5× the balanced one: perf-notes change 35). So its planes are the units of
    /// `grouped_weight_units` (an expert's rows, or a chunk of a crowded expert's, whose tiles leave
    /// float32 partials), longest first, and the tiles are dealt out in a snake: round `r` gives
    /// rank `rG + b` to block `b`, or `rG + (G' - 1 - b)` in odd rounds (G' the round's tiles), so a
    /// block that drew a long tile in one round draws a short one in the next.
    template <bool VARY_K>
    __device__ __forceinline__ bool gh_tile(int64_t L, int64_t columnTiles, int64_t tilesY, int64_t tilesZ, const int* offsets,
                                            const int* tiles, int64_t M, int64_t K, GroupedTile& t, int64_t& n0) {
        if (VARY_K) {
            const int64_t G = gridDim.x, perUnit = columnTiles * tilesY, total = perUnit * tilesZ;
            const int64_t r = L / G, b = L % G, round = total - r * G < G ? total - r * G : G;
            const int64_t rank = r * G + ((r & 1) ? round - 1 - b : b);
            return grouped_unit_tile(tiles, rank / perUnit, rank % perUnit, columnTiles, GH_BM, GH_BN, M, t, n0);
        }
        n0 = (L % columnTiles) * GH_BN;
        return grouped_row_tile(GH_BM, (int)((L / columnTiles) % tilesY), offsets, tiles, K, t);
    }

    template <bool A_K, bool B_K, bool VARY_K, int MODE, int ACT>
    __device__ __forceinline__ void grouped_gemm_wgmma(GG_PARAMS, int64_t tilesY, int64_t tilesZ, const GHTensorMap* mapA,
                                                       const GHTensorMap* mapB) {
        extern __shared__ __align__(1024) bf16_t gh_shared[];
        // The swizzle repeats every 1024 bytes of address: the stages start on such a boundary.
        const uint32_t sA = (gg_shared_address(gh_shared) + 1023) & ~1023u, sB = sA + GH_STAGES * GH_TILE_BYTES;
        char* const bytes = (char*)gh_shared + (sA - gg_shared_address(gh_shared));   // at sA
        // After the ring: two staging buffers (a tile's rows, then its column sums' partials), then
        // the barriers: full and empty a stage, and a buffer's staged (by the MMA warpgroup) and
        // drained (by its epilogue warpgroup).
        const uint32_t ringBytes = 2 * GH_STAGES * GH_TILE_BYTES, bufferBytes = GH_STAGED_BYTES + GH_PARTIAL_BYTES;
        const uint32_t bars = sA + ringBytes + 2 * bufferBytes;
        auto full = [&](uint32_t s) { return bars + 8 * s; };
        auto empty = [&](uint32_t s) { return bars + 8 * (GH_STAGES + s); };
        auto stagedFull = [&](int buffer) { return bars + 8 * (2 * GH_STAGES + buffer); };
        auto drained = [&](int buffer) { return bars + 8 * (2 * GH_STAGES + 2 + buffer); };
        auto stagedRows = [&](int buffer) { return (bf16_t*)(bytes + ringBytes + buffer * bufferBytes); };
        auto partials = [&](int buffer) { return (float*)(bytes + ringBytes + buffer * bufferBytes + GH_STAGED_BYTES); };
        const int tid = threadIdx.x, role = tid >> 7;
        if (tid == 0) {
            // A stage is full once the producer's tensor copies brought all their bytes.
            for (int s = 0; s < GH_STAGES; s++) { gh_bar_init(full(s), 1); gh_bar_init(empty(s), 128); }
            for (int b = 0; b < 2; b++) { gh_bar_init(stagedFull(b), 128); gh_bar_init(drained(b), 128); }
            asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        }
        __syncthreads();
        const int64_t columnTiles = (N + GH_BN - 1) / GH_BN, total = columnTiles * tilesY * tilesZ;

        if (role == 0) {
            // The producer: every K tile of every tile of this block, in order.
            asm volatile("setmaxnreg.dec.sync.aligned.u32 \#(producerRegisters);\n" ::: "memory");
            // One thread copies a K tile as two to four tensor boxes of 64 × 128 or 64 × 64: A's by
            // rows of the routed tokens (K-contiguous, a row tile's rows past its expert feed only
            // outputs never stored) or, in the weight gradient, as K rows of gy (M-contiguous);
            // B from expert t.g's weights (a 3-D map over the experts) or, in the weight gradient,
            // as K rows of x. A weight gradient's K tile past its expert's rows is cut short by the
            // MMA warpgroup.
            if (tid != 0) return;
            uint32_t p = 0;
            for (int64_t L = blockIdx.x; L < total; L += gridDim.x) {
                GroupedTile t; int64_t n0;
                if (!gh_tile<VARY_K>(L, columnTiles, tilesY, tilesZ, offsets, tiles, M, K, t, n0)) continue;
                const int kTiles = (int)((t.kEnd - t.k0 + GH_BK - 1) / GH_BK);
                for (int kt = 0; kt < kTiles; kt++, p++) {
                    const uint32_t s = p % GH_STAGES, tileA = sA + s * GH_TILE_BYTES, tileB = sB + s * GH_TILE_BYTES;
                    const int k = (int)t.k0 + kt * GH_BK, m0 = (int)t.m0, n = (int)n0;
                    gh_bar_wait(empty(s), ((p / GH_STAGES) & 1) ^ 1);
                    gh_bar_expect(full(s), 2 * GH_TILE_BYTES);
                    if (A_K) {
                        gh_tma_2d(tileA, mapA, k, m0, full(s));
                    } else {
                        gh_tma_2d(tileA, mapA, m0, k, full(s));
                        gh_tma_2d(tileA + 8192, mapA, m0 + 64, k, full(s));
                    }
                    if (B_K) {
                        gh_tma_3d(tileB, mapB, k, n, t.g, full(s));
                    } else if (VARY_K) {
                        gh_tma_2d(tileB, mapB, n, k, full(s));
                        gh_tma_2d(tileB + 8192, mapB, n + 64, k, full(s));
                    } else {
                        gh_tma_3d(tileB, mapB, n, k, t.g, full(s));
                        gh_tma_3d(tileB + 8192, mapB, n + 64, k, t.g, full(s));
                    }
                }
            }
            return;
        }

        if (role == 1) {
            // The MMA warpgroup: every tile of this block, staged for the epilogue warpgroups in turn.
            asm volatile("setmaxnreg.inc.sync.aligned.u32 \#(mmaRegisters);\n" ::: "memory");
            const int lane = tid & 31, warp = (tid >> 5) & 3, mtid = tid & 127;
            // Descriptors of the tile's rows 0-63 and 64-127 of A and all 128 columns of B for k = 0
            // of stage 0; a stage adds GH_TILE_BYTES. The leading offset matters only to an M- or
            // N-contiguous operand (K-contiguous: 16, unused).
            const uint32_t leadA = A_K ? 16 : 8192, leadB = B_K ? 16 : 8192;
            const uint64_t descA0 = gh_descriptor(sA, leadA, 1024), descA1 = gh_descriptor(sA + (A_K ? 64 * 128 : 8192), leadA, 1024);
            const uint64_t descB = gh_descriptor(sB, leadB, 1024);
            // 16 more of K: 32 bytes along a K-contiguous row, two 8-row groups down the other kind
            // (descriptors count in 16-byte units).
            const uint64_t kStepA = A_K ? 2 : 128, kStepB = B_K ? 2 : 128, stageStep = GH_TILE_BYTES >> 4;
            // The weight gradient with `aux` (`[E, M]`): the tiles of the first column also sum A over
            // K (the experts' bias gradient, Σ over their rows of gy), from the stage tiles the MMAs
            // read, while those run: thread (sc, skg) adds the 8 M values of chunk sc at K rows skg,
            // skg + 8, ... of each stage, where A's swizzle (M-contiguous) is fixed.
            const int sc = mtid & 15, skg = mtid >> 4;
            uint32_t p = 0;
            int turn = 0;
            for (int64_t L = blockIdx.x; L < total; L += gridDim.x) {
                GroupedTile t; int64_t n0;
                if (!gh_tile<VARY_K>(L, columnTiles, tilesY, tilesZ, offsets, tiles, M, K, t, n0)) continue;
                const int kTiles = (int)((t.kEnd - t.k0 + GH_BK - 1) / GH_BK);
                const bool sumsA = VARY_K && !A_K && aux != nullptr && n0 == 0;
                float acc[128];
                #pragma unroll
                for (int i = 0; i < 128; i++) acc[i] = 0.f;
                float colSum[8];
                #pragma unroll
                for (int e = 0; e < 8; e++) colSum[e] = 0.f;
                for (int kt = 0; kt < kTiles; kt++, p++) {
                    const uint32_t s = p % GH_STAGES;
                    gh_bar_wait(full(s), (p / GH_STAGES) & 1);
                    const int kLeft = (int)(t.kEnd - t.k0) - kt * GH_BK;
                    if (VARY_K && kLeft < GH_BK) {
                        // The expert's last K tile: the boxes brought the next expert's rows too.
                        // Zero K rows kLeft ... 63 of both operands (each 128 bytes in each of two
                        // blocks, both M- or N-contiguous), then let the tensor cores, which read
                        // through the async proxy, see the writes.
                        for (int i = mtid; i < (GH_BK - kLeft) * 32; i += 128) {
                            const int row = kLeft + (i >> 5), part = (i >> 3) & 3;
                            char* const at = bytes + (part >> 1) * GH_STAGES * GH_TILE_BYTES + s * GH_TILE_BYTES + (part & 1) * 8192;
                            *(GHWords*)(at + row * 128 + (i & 7) * 16) = GHWords{};
                        }
                        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
                        gh_sync_warpgroup(1);
                    }
                    const uint64_t stage = (uint64_t)s * stageStep;
                    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
                    #pragma unroll
                    for (int kk = 0; kk < GH_BK / 16; kk++) {
                        gh_wgmma<A_K ? 0 : 1, B_K ? 0 : 1>(acc, descA0 + stage + kk * kStepA, descB + stage + kk * kStepB);
                        gh_wgmma<A_K ? 0 : 1, B_K ? 0 : 1>(acc + 64, descA1 + stage + kk * kStepA, descB + stage + kk * kStepB);
                    }
                    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
                    if (sumsA) {
                        const char* chunk = bytes + s * GH_TILE_BYTES + (sc >> 3) * 8192 + (((sc & 7) ^ skg) << 4);
                        #pragma unroll
                        for (int j = 0; j < GH_BK / 8; j++) {
                            const GGVector<8> v = *(const GGVector<8>*)(chunk + (skg + 8 * j) * 128);
                            #pragma unroll
                            for (int e = 0; e < 8; e++) colSum[e] += LD(v.v[e]);
                        }
                    }
                    // The MMAs of K tile kt - GH_IN_FLIGHT are done: its stage may be refilled.
                    asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(GH_IN_FLIGHT) : "memory");
                    if (kt >= GH_IN_FLIGHT) gh_bar_arrive(empty((p - GH_IN_FLIGHT) % GH_STAGES));
                }
                asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
                for (int d = kTiles < GH_IN_FLIGHT ? kTiles : GH_IN_FLIGHT; d > 0; d--) gh_bar_arrive(empty((p - d) % GH_STAGES));
                #pragma unroll
                for (int i = 0; i < 128; i++) gh_fence_accumulator(acc[i]);
                if (VARY_K && t.part >= 0) {
                    // A chunk of a crowded expert's rows: its float32 partial, thread by thread (coalesced),
                    // for `grouped_weight_finish`; no epilogue warpgroup takes it.
                    float* const out = work + t.part * GH_PART_FLOATS;
                    #pragma unroll
                    for (int i = 0; i < 128; i++) out[i * 128 + mtid] = acc[i];
                    if (sumsA) {
                        #pragma unroll
                        for (int e = 0; e < 8; e++) out[GH_BM * GH_BN + skg * GH_BM + sc * 8 + e] = colSum[e];
                    }
                    continue;
                }

                // Staged in bfloat16 (what the epilogue's first step rounds to) in buffer `turn % 2`,
                // once its epilogue warpgroup is done with tile turn - 2 (its (turn / 2 - 1)-th).
                // acc[64·half + 4j + 2h + e]: row 64·half + 16·warp + lane/4 + 8h, column 8j + 2·(lane%4) + e.
                const int buffer = turn & 1;
                if (turn >= 2) gh_bar_wait(drained(buffer), ((turn >> 1) - 1) & 1);
                turn++;
                bf16_t* const staged = stagedRows(buffer);
                #pragma unroll
                for (int half = 0; half < 2; half++)
                    #pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int r = half * 64 + warp * 16 + (lane >> 2) + h * 8;
                        #pragma unroll
                        for (int j = 0; j < 16; j++)
                            *(uint32_t*)&staged[r * GH_CSTRIDE + j * 8 + (lane & 3) * 2] =
                                gh_pack_bf16x2(acc[64 * half + 4 * j + 2 * h], acc[64 * half + 4 * j + 2 * h + 1]);
                    }
                if (sumsA) {
                    float* const partial = partials(buffer);
                    #pragma unroll
                    for (int e = 0; e < 8; e++) partial[skg * GH_BM + sc * 8 + e] = colSum[e];
                }
                gh_bar_arrive(stagedFull(buffer));
            }
            return;
        }

        // An epilogue warpgroup: every other tile of this block, from its staging buffer.
        asm volatile("setmaxnreg.dec.sync.aligned.u32 \#(epilogueRegisters);\n" ::: "memory");
        const int me = role - 2, etid = tid & 127;
        bf16_t* const staged = stagedRows(me);
        const float* const partial = partials(me);
        int turn = 0;
        for (int64_t L = blockIdx.x; L < total; L += gridDim.x) {
            GroupedTile t; int64_t n0;
            if (!gh_tile<VARY_K>(L, columnTiles, tilesY, tilesZ, offsets, tiles, M, K, t, n0)) continue;
            if (VARY_K && t.part >= 0) continue;   // a partial, not staged
            if ((turn & 1) != me) { turn++; continue; }
            gh_bar_wait(stagedFull(me), (turn >> 1) & 1);   // this warpgroup's (turn / 2)-th tile
            turn++;
            if (VARY_K && !A_K && aux != nullptr && n0 == 0) {
                float sum = 0.f;
                #pragma unroll
                for (int kg = 0; kg < 8; kg++) sum += partial[kg * GH_BM + etid];
                if (t.m0 + etid < t.mEnd) aux[(int64_t)t.g * M + t.m0 + etid] = ST(sum);
            }
            // Each thread finishes the same 8 adjacent columns of every 8th row (a warp writes two
            // whole rows as 16-byte vectors): their bias is loaded once a tile, and the
            // pre-activations a backward reads eight rows ahead of the stores. (Loaded next to each
            // row, a load could not pass the previous row's store to C, which might alias it: one
            // load latency a row left the activations' epilogues 2-3× the MMAs at short K, change 30.)
            T* const ct = VARY_K ? c + t.g * cStride : c;
            const int c8 = (etid % (GH_BN / 8)) * 8, r0 = etid / (GH_BN / 8);
            const int64_t col = n0 + c8;
            GGVector<8> b;
            if ((MODE == 1 || MODE == 2) && bias && col < N) b = *(const GGVector<8>*)(bias + t.g * N + col);
            for (int i0 = 0; i0 < GH_BM / 8 && col < N; i0 += 8) {
                GGVector<8> h[8];
                if (MODE == 3) {
                    #pragma unroll
                    for (int u = 0; u < 8; u++) {
                        const int64_t row = t.m0 + r0 + 8 * (i0 + u);
                        if (row < t.mEnd) h[u] = *(const GGVector<8>*)(aux + row * ldc + col);
                    }
                }
                #pragma unroll
                for (int u = 0; u < 8; u++) {
                    const int r = r0 + 8 * (i0 + u);
                    const int64_t row = t.m0 + r, at = row * ldc + col;
                    if (row >= t.mEnd) break;
                    const GGVector<8> s8 = *(const GGVector<8>*)&staged[r * GH_CSTRIDE + c8];
                    if (MODE == 0) {
                        *(GGVector<8>*)(ct + at) = s8;   // already the rounded result
                    } else {
                        float v[8];
                        #pragma unroll
                        for (int e = 0; e < 8; e++) v[e] = LD(s8.v[e]);
                        gg_epilogue_math<MODE, ACT, 8, true>(v, b, bias != nullptr, h[u]);
                        if (MODE == 2) *(GGVector<8>*)(aux + at) = h[u];
                        GHWords out;
                        #pragma unroll
                        for (int e = 0; e < 4; e++) out.w[e] = gh_pack_bf16x2(v[2 * e], v[2 * e + 1]);
                        *(GHWords*)(ct + at) = out;
                    }
                }
            }
            gh_bar_arrive(drained(me));
        }
    }
    #define GH_ENTRY(NAME, AK, BK, VK, MODE, ACT) \
    extern "C" __global__ void __launch_bounds__(\#(threads), 1) NAME(GG_PARAMS, int64_t tilesY, int64_t tilesZ, \
        const __grid_constant__ GHTensorMap mapA, const __grid_constant__ GHTensorMap mapB) { \
        grouped_gemm_wgmma<AK, BK, VK, MODE, ACT>(GG_ARGS, tilesY, tilesZ, &mapA, &mapB); }
    // The entries of `GroupedGemmKernels`, under the same names with `_wgmma` appended.
    GG_ENTRIES(GH_ENTRY, _wgmma)

    /// The weight gradients of the experts `grouped_weight_units` split: each tile's float32
    /// partials, one a chunk of the expert's rows, summed in chunk order and rounded once, as the
    /// MMA warpgroup would have staged the whole sum; and with `aux`, the chunks' column sums (the
    /// experts' bias gradients). Block (8·tile + q, split) of 128 threads: thread `t` sums what the
    /// MMA warpgroup's thread `t` held in accumulators 16q ... 16q + 15, all 16 loads of a chunk in
    /// flight at once. (A block a tile, one accumulator at a time, took 54 µs a medium product;
    /// 32 accumulators a thread in blocks of four quarters, 12 µs: too few blocks.) Accumulator
    /// `i` = 64·half + 4·j + 2·h + e is row 64·half + 16·warp + lane/4 + 8h, column
    /// 8j + 2·(lane%4) + e of the tile.
    extern "C" __global__ void __launch_bounds__(128) grouped_weight_finish(const float* __restrict__ work, const int* __restrict__ splits,
        bf16_t* __restrict__ c, bf16_t* __restrict__ aux, int64_t M, int64_t N, int64_t ldc, int64_t cStride, int64_t columnTiles) {
        const int* split = splits + 3 * blockIdx.y;
        const int g = split[0];
        if (g < 0) return;
        const int64_t tile = blockIdx.x >> 3, perUnit = gridDim.x >> 3, first = split[1], chunks = split[2];
        const int q = blockIdx.x & 7, t = threadIdx.x, lane = t & 31, warp = t >> 5;
        const int64_t m0 = (tile / columnTiles) * GH_BM, n0 = (tile % columnTiles) * GH_BN;
        float v[16];
        #pragma unroll
        for (int i = 0; i < 16; i++) v[i] = 0.f;
        for (int64_t j = 0; j < chunks; j++) {
            const float* p = work + (first + j * perUnit + tile) * GH_PART_FLOATS + 16 * q * 128 + t;
            #pragma unroll
            for (int i = 0; i < 16; i++) v[i] += p[i * 128];
        }
        bf16_t* const ct = c + g * cStride;
        #pragma unroll
        for (int i = 0; i < 16; i += 2) {
            const int a = 16 * q + i, half = a >> 6, j8 = (a & 63) >> 2, h = (a >> 1) & 1;
            const int64_t row = m0 + half * 64 + warp * 16 + (lane >> 2) + h * 8, col = n0 + j8 * 8 + (lane & 3) * 2;
            if (row < M && col < N) *(uint32_t*)&ct[row * ldc + col] = gh_pack_bf16x2(v[i], v[i + 1]);
        }
        if (aux != nullptr && n0 == 0 && q == 0) {
            float sum = 0.f;
            for (int64_t j = 0; j < chunks; j++) {
                const float* p = work + (first + j * perUnit + tile) * GH_PART_FLOATS + GH_BM * GH_BN;
                #pragma unroll
                for (int kg = 0; kg < 8; kg++) sum += p[kg * GH_BM + t];
            }
            if (m0 + t < M) aux[(int64_t)g * M + m0 + t] = ST(sum);
        }
    }
    #endif
    """#

    /// `gh_wgmma<TA, TB>(acc, descA, descB)`: `acc += A·B` for one 64×128×16 step, both operands from
    /// shared memory, `TA`/`TB` 0 for a K-contiguous operand and 1 for the other kind. Written out
    /// here because the instruction names its 64 accumulator registers one by one.
    static var wgmmaHelper: String {
        let registers = (0..<64).map { "%\($0)" }.joined(separator: ", ")
        let outputs = (0..<64).map { "\"+f\"(d[\($0)])" }.joined(separator: ", ")
        return """
        template <int TA, int TB>
        __device__ __forceinline__ void gh_wgmma(float* d, uint64_t descA, uint64_t descB) {
            asm volatile("{\\n.reg .pred p;\\nsetp.ne.b32 p, %66, 0;\\n"
                         "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {\(registers)}, %64, %65, p, 1, 1, %67, %68;\\n}\\n"
                         : \(outputs)
                         : "l"(descA), "l"(descB), "r"(1), "n"(TA), "n"(TB));
        }
        """
    }
}
