#!/usr/bin/env python3
"""Runs the grouped GEMM kernels (`GroupedGemmKernels`, `GroupedGemmHopperKernels`) on the CPU and
checks them against a float64 reference: every product (forward, data gradient, weight gradient),
every epilogue, tile edges, empty experts.

    python3 scripts/emulate-grouped-gemm.py [--family mma|simt|wgmma ...] [--keep DIR]

For machines without a GPU: the kernels' CUDA C++ is compiled as C++ (clang++ or g++), each CUDA
thread a host thread, `__syncthreads` a barrier. The inline PTX they use is emulated from the PTX
ISA's definitions: `cp.async` as an immediate copy (zero-filled past its source size), `ldmatrix`
and `mma.sync` as warp-collective exchanges of the documented fragments, `wgmma` as each thread
computing its accumulators from shared memory through the descriptors' canonical layouts (none
and the 128-byte swizzle), `mbarrier` as a phase counter under a lock (an arrive after copies:
at once, the copies being done; expected bytes counted down by the tensor copies), a tensor copy
(`cp.async.bulk.tensor`, TMA) as a box read from a tensor map the harness encodes its own way and
stored with the 128-byte swizzle. The persistent wgmma kernel runs on a grid of three blocks, so
each walks several tiles and its two epilogue warpgroups take turns. Every family's weight gradient
walks the units `grouped_weight_units` builds (with chunks of at most 128 rows here, so the crowded
experts split), and `grouped_weight_finish` (wgmma) or `grouped_weight_sum` (the others) sums the
split experts' partials; then again with too little room for partials, where they stay whole. So a pass says the kernels'
own indexing, pipelining and epilogues are right under that reading of the ISA; the hardware has the last word (`CUDARoutingTests` on a GPU). The `mma.sync`
family has passed on an H200, which checks the emulation of `ldmatrix` and `mma.sync` themselves.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "Sources/Tensors/CUDA/Kernels")


def raw_strings(name):
    text = open(os.path.join(KERNELS, name)).read()
    return re.findall(r'#"""\n(.*?)"""#', text, re.S)


def strip_function(source, name):
    """Removes the definition of device function `name` (its signature line to its closing brace)."""
    match = re.search(r'(template <[^>]*>\s*)?__device__ __forceinline__ [^\n]*\b' + name + r'\(', source)
    if not match:
        return source
    depth, i = 0, source.index("{", match.end())
    while True:
        if source[i] == "{":
            depth += 1
        elif source[i] == "}":
            depth -= 1
            if depth == 0:
                return source[:match.start()] + source[i + 1:]
        i += 1


def function_text(source, name):
    """The definition of kernel `name` (`extern "C" __global__ void name(...) {...}`)."""
    start = source.index('extern "C" __global__ void ' + name + "(")
    depth, i = 0, source.index("{", start)
    while True:
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        if depth == 0:
            return source[start:i + 1]
        i += 1


def kernel_source(family):
    prelude = raw_strings("KernelPrelude.swift")[0]
    # The table the grouped kernels read, built on the device (RoutingKernels, dtype-independent).
    routing = raw_strings("RoutingKernels.swift")[0]
    table = function_text(routing, "grouped_tile_table") + "\n" + function_text(routing, "grouped_weight_units")
    table = re.sub(r'extern __shared__ (\w+) (\w+)\[\];', r'\1* \2 = (\1*)emu_smem;', table)
    unary = raw_strings("ElementwiseKernels.swift")[0]
    common, kernels = raw_strings("GroupedGemmKernels.swift")[:2]
    if family == "wgmma":
        hopper = open(os.path.join(KERNELS, "GroupedGemmHopperKernels.swift")).read()
        kernels = raw_strings("GroupedGemmHopperKernels.swift")[0].replace("\\#(wgmmaHelper)", "")
        for name in ["stages", "mmasInFlight", "threads", "producerRegisters", "mmaRegisters", "epilogueRegisters"]:
            value = re.search(r"static let (?:\w+ = \d+, )*" + name + r" = (\d+)", hopper).group(1)
            kernels = kernels.replace("\\#(" + name + ")", value)
    body = common + "\n" + kernels
    for helper in ["gg_shared_address", "gg_copy16", "gg_ldsm_t", "gg_ldsm", "gg_mma", "gh_fence_accumulator",
                   "gh_bar_init", "gh_bar_wait", "gh_bar_arrive", "gh_pack_bf16x2", "gh_bar_expect",
                   "gh_tma_2d", "gh_tma_3d", "gh_sync_warpgroup"]:
        body = strip_function(body, helper)
    # The remaining inline PTX orders asynchronous work (commit, wait, fences): the emulation's copies
    # and MMAs complete when issued, so these are no-ops.
    body = re.sub(r'asm volatile\(.*?\);', ';', body, flags=re.S)
    body = re.sub(r'extern __shared__ __align__\((\d+)\) (\w+) (\w+)\[\];', r'\2* \3 = (\2*)emu_smem;', body)
    macro = "FM_F32" if family == "simt" else "FM_BF16"
    return f"#define {macro}\n{prelude}\n{unary}\n{EMULATED_PTX}\n{body}\n{table}\n"


SHIM = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <condition_variable>
#include <map>
#include <mutex>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

struct Dim { unsigned x = 1, y = 1, z = 1; };
thread_local Dim threadIdx, blockIdx;
Dim blockDim, gridDim;
alignas(1024) unsigned char emu_smem[256 * 1024];
std::barrier<>* emu_block_barrier;
std::vector<std::barrier<>*> emu_warp_barriers, emu_group_barriers;

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define __grid_constant__

namespace emu {
inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline double __longlong_as_double(long long u) { double f; std::memcpy(&f, &u, 8); return f; }
template <class V> V __shfl_xor_sync(unsigned, V, int) { std::abort(); }
template <class P> P atomicCAS(P*, P, P) { std::abort(); }
template <class P, class V> void atomicAdd(P*, V) { std::abort(); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct alignas(8) float2 { float x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
"""

EMULATED_PTX = r"""
// --- PTX emulated (see the script's docstring) ---
inline uint32_t gg_shared_address(const void* p) { return (uint32_t)((const unsigned char*)p - emu_smem); }
inline void gg_copy16(uint32_t dst, const void* src, bool valid) {
    if (valid) std::memcpy(emu_smem + dst, src, 16); else std::memset(emu_smem + dst, 0, 16);
}
struct WarpScratch { uint32_t address[32]; uint32_t a[32][4]; uint32_t b[32][2]; };
static WarpScratch emu_warp_scratch[32];
inline void emu_warp_sync() { emu_warp_barriers[threadIdx.x >> 5]->arrive_and_wait(); }
// `bar.sync id, 128` as the kernels use it: the 128 threads of one warpgroup.
inline void gh_sync_warpgroup(int) { emu_group_barriers[threadIdx.x >> 7]->arrive_and_wait(); }
inline uint16_t emu_b16(uint32_t address) { uint16_t v; std::memcpy(&v, emu_smem + address, 2); return v; }
// ldmatrix .x4: lane L names row L%8 of matrix L/8; register j of lane t holds matrix j's row t/4,
// columns 2(t%4), 2(t%4)+1 (transposed: rows 2(t%4), 2(t%4)+1 of column t/4).
inline void emu_ldsm(uint32_t address, uint32_t* r, bool transposed) {
    int lane = threadIdx.x & 31;
    WarpScratch& s = emu_warp_scratch[threadIdx.x >> 5];
    s.address[lane] = address;
    emu_warp_sync();
    for (int j = 0; j < 4; j++) {
        uint16_t lo, hi;
        if (!transposed) {
            uint32_t row = s.address[j * 8 + lane / 4];
            lo = emu_b16(row + (lane % 4) * 4); hi = emu_b16(row + (lane % 4) * 4 + 2);
        } else {
            lo = emu_b16(s.address[j * 8 + 2 * (lane % 4)] + (lane / 4) * 2);
            hi = emu_b16(s.address[j * 8 + 2 * (lane % 4) + 1] + (lane / 4) * 2);
        }
        r[j] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    emu_warp_sync();
}
inline void gg_ldsm(uint32_t address, uint32_t* r) { emu_ldsm(address, r, false); }
inline void gg_ldsm_t(uint32_t address, uint32_t* r) { emu_ldsm(address, r, true); }
inline float emu_lo(uint32_t v) { return bf16_to_float((bf16_t)(v & 0xffff)); }
inline float emu_hi(uint32_t v) { return bf16_to_float((bf16_t)(v >> 16)); }
// mma.sync m16n8k16 row.col: group g = lane/4, c = lane%4. A: a0 (g, 2c..), a1 (g+8, 2c..),
// a2 (g, 2c+8..), a3 (g+8, 2c+8..); B: b0 (k 2c, 2c+1; n g), b1 (k 2c+8, 2c+9; n g);
// C: c0, c1 (g, 2c, 2c+1), c2, c3 (g+8, 2c, 2c+1).
inline void gg_mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    int lane = threadIdx.x & 31;
    WarpScratch& s = emu_warp_scratch[threadIdx.x >> 5];
    for (int i = 0; i < 4; i++) s.a[lane][i] = a[i];
    s.b[lane][0] = b0; s.b[lane][1] = b1;
    emu_warp_sync();
    float A[16][16], B[16][8];
    for (int t = 0; t < 32; t++) {
        int g = t / 4, q = t % 4;
        const uint32_t* f = s.a[t];
        A[g][2 * q] = emu_lo(f[0]); A[g][2 * q + 1] = emu_hi(f[0]);
        A[g + 8][2 * q] = emu_lo(f[1]); A[g + 8][2 * q + 1] = emu_hi(f[1]);
        A[g][2 * q + 8] = emu_lo(f[2]); A[g][2 * q + 9] = emu_hi(f[2]);
        A[g + 8][2 * q + 8] = emu_lo(f[3]); A[g + 8][2 * q + 9] = emu_hi(f[3]);
        B[2 * q][g] = emu_lo(s.b[t][0]); B[2 * q + 1][g] = emu_hi(s.b[t][0]);
        B[2 * q + 8][g] = emu_lo(s.b[t][1]); B[2 * q + 9][g] = emu_hi(s.b[t][1]);
    }
    emu_warp_sync();
    int g = lane / 4, q = lane % 4;
    for (int i = 0; i < 4; i++) {
        int row = g + (i >= 2 ? 8 : 0), col = 2 * q + (i & 1);
        float sum = c[i];
        for (int k = 0; k < 16; k++) sum += A[row][k] * B[k][col];
        c[i] = sum;
    }
}
// wgmma m64n128k16, both operands from shared memory: descriptor = start >> 4 (bits 0-13), leading
// byte offset >> 4 (16-29), stride byte offset >> 4 (32-45), layout type (62-63: 0 none, 1 the
// 128-byte swizzle). No swizzle: a core matrix is 8 rows of 16 bytes, leading = between core
// matrices along K, stride = along M or N; K-major (trans 0): row = M (or N) index, 8 K values a
// row; MN-major (trans 1): row = K index, 8 M (or N) values a row. 128-byte swizzle: rows of 128
// bytes, 8-row groups `stride` apart; K-major: row = M (or N) index; MN-major: row = K index, 64 M
// (or N) values a row, blocks of 64 `leading` apart; then the 16-byte chunk bits of the address
// (4-6) are XORed with its row-in-group bits (7-9).
inline uint32_t emu_operand(uint64_t desc, int trans, int mn, int k) {
    uint32_t start = (uint32_t)(desc & 0x3fff) << 4, lead = (uint32_t)((desc >> 16) & 0x3fff) << 4,
             stride = (uint32_t)((desc >> 32) & 0x3fff) << 4;
    if ((desc >> 62) == 1) {
        uint32_t address = trans == 0 ? start + (mn % 8) * 128 + (mn / 8) * stride + k * 2
                                      : start + (mn % 64) * 2 + (mn / 64) * lead + (k % 8) * 128 + (k / 8) * stride;
        return address ^ (((address >> 7) & 7) << 4);
    }
    return trans == 0 ? start + (mn % 8) * 16 + (mn / 8) * stride + (k % 8) * 2 + (k / 8) * lead
                      : start + (mn % 8) * 2 + (mn / 8) * stride + (k % 8) * 16 + (k / 8) * lead;
}
// Thread t of the warpgroup: d[4j + 2h + e] at row 16·(t/32) + (t%32)/4 + 8h, column 8j + 2(t%4) + e.
template <int TA, int TB>
inline void gh_wgmma(float* d, uint64_t descA, uint64_t descB) {
    int t = threadIdx.x & 127, warp = t / 32, lane = t % 32;
    for (int j = 0; j < 16; j++)
        for (int h = 0; h < 2; h++)
            for (int e = 0; e < 2; e++) {
                int row = 16 * warp + lane / 4 + 8 * h, col = 8 * j + 2 * (lane % 4) + e;
                float sum = 0;
                for (int k = 0; k < 16; k++)
                    sum += bf16_to_float(emu_b16(emu_operand(descA, TA, row, k))) * bf16_to_float(emu_b16(emu_operand(descB, TB, col, k)));
                d[4 * j + 2 * h + e] += sum;
            }
}
inline void gh_fence_accumulator(float&) {}
inline uint32_t gh_pack_bf16x2(float lo, float hi) { return float_to_bf16(lo) | ((uint32_t)float_to_bf16(hi) << 16); }
// mbarrier: completed phases, arrivals left in the current one and bytes of tensor copies it still
// expects, by shared-memory address; a phase completes when both are zero.
struct EmuBar { int count = 0, pending = 0; unsigned phases = 0; long tx = 0; };
static std::mutex emu_bar_mutex;
static std::condition_variable emu_bar_changed;
static std::map<uint32_t, EmuBar> emu_bars;
inline void gh_bar_init(uint32_t bar, int count) { std::lock_guard<std::mutex> l(emu_bar_mutex); emu_bars[bar] = {count, count, 0, 0}; }
inline void emu_bar_update(uint32_t bar, int arrivals, long bytes) {
    std::lock_guard<std::mutex> l(emu_bar_mutex);
    EmuBar& b = emu_bars.at(bar);
    b.pending -= arrivals; b.tx += bytes;
    if (b.pending == 0 && b.tx == 0) { b.phases++; b.pending = b.count; emu_bar_changed.notify_all(); }
}
inline void gh_bar_arrive(uint32_t bar) { emu_bar_update(bar, 1, 0); }
inline void gh_bar_expect(uint32_t bar, uint32_t bytes) { emu_bar_update(bar, 1, bytes); }
// A tensor map as the harness encodes it (`emu_encode`) in the 128 bytes of a `CUtensorMap`: 16-bit
// elements, box rows of 64 elements stored with the 128-byte swizzle (chunk c of box row r at chunk
// c ^ (r % 8); the destination is 1024-byte aligned), zeros outside the tensor.
struct EmuMap { const unsigned char* base; int64_t dims[3]; int64_t strides[2]; int box[3]; int rank; };
inline void emu_tma(uint32_t dst, const void* map, int x, int y, int z, uint32_t bar) {
    EmuMap m; std::memcpy(&m, map, sizeof m);
    const int planes = m.rank == 3 ? m.box[2] : 1;
    for (int zz = 0; zz < planes; zz++)
        for (int yy = 0; yy < m.box[1]; yy++) {
            const int row = zz * m.box[1] + yy;
            const int64_t Y = y + yy, Z = z + zz;
            for (int xx = 0; xx < m.box[0]; xx++) {
                const int64_t X = x + xx;
                uint16_t v = 0;
                if (X >= 0 && X < m.dims[0] && Y >= 0 && Y < m.dims[1] && (m.rank < 3 || (Z >= 0 && Z < m.dims[2])))
                    std::memcpy(&v, m.base + X * 2 + Y * m.strides[0] + (m.rank == 3 ? Z * m.strides[1] : 0), 2);
                const int chunk = (xx * 2) / 16;
                std::memcpy(emu_smem + dst + row * 128 + ((chunk ^ (row & 7)) << 4) + (xx * 2) % 16, &v, 2);
            }
        }
    emu_bar_update(bar, 0, -(long)planes * m.box[1] * m.box[0] * 2);
}
inline void gh_tma_2d(uint32_t dst, const void* map, int x, int y, uint32_t bar) { emu_tma(dst, map, x, y, 0, bar); }
inline void gh_tma_3d(uint32_t dst, const void* map, int x, int y, int z, uint32_t bar) { emu_tma(dst, map, x, y, z, bar); }
// The phase of parity `parity` is complete once the completed phases' parity differs from it (the
// phase before the first counts as complete, so a first wait on parity 1 passes).
inline void gh_bar_wait(uint32_t bar, uint32_t parity) {
    std::unique_lock<std::mutex> l(emu_bar_mutex);
    emu_bar_changed.wait(l, [&] { return (emu_bars.at(bar).phases & 1) != parity; });
}
"""

HARNESS = r"""

typedef void (*Kernel)(const T*, const T*, T*, const int*, const int*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, const T*, T*, float* TILE_PARAMS);
// A persistent family's blocks walk the tile grid a one-block-a-tile family is launched on.
static Dim emu_tiles;
static float* emu_work = nullptr;   // the weight gradient's partials (`grouped_weight_finish`, `grouped_weight_sum`)
#if PERSISTENT
// The tensor maps of the next launch, as `CUDAGroupedKernel.operandMaps` makes them: A [rows, k] in
// boxes of 64 × 128; B [E, n, k] (forward) in boxes of 64 × 128 × 1, or [E, k, n] (data gradient)
// in boxes of 64 × 64 × 1; the weight gradient's gy [rows, m] and x [rows, n] in boxes of 64 × 64.
static GHTensorMap emu_map_a, emu_map_b;
static GHTensorMap emu_encode(const T* base, int rank, std::vector<int64_t> dims, std::vector<int64_t> strides, std::vector<int> box) {
    EmuMap m{};
    m.base = (const unsigned char*)base; m.rank = rank;
    for (int i = 0; i < rank; i++) { m.dims[i] = dims[i]; m.box[i] = box[i]; }
    for (int i = 0; i + 1 < rank; i++) m.strides[i] = strides[i];
    GHTensorMap map{};
    std::memcpy(&map, &m, sizeof m);
    return map;
}
static void emu_weight_maps(const T* gy, const T* x, int64_t rows, int64_t m, int64_t n, int64_t ldgy, int64_t ldx) {
    emu_map_a = emu_encode(gy, 2, {m, rows}, {ldgy * 2}, {64, 64});
    emu_map_b = emu_encode(x, 2, {n, rows}, {ldx * 2}, {64, 64});
}
static void emu_maps(bool forward, const T* a, const T* b, int64_t rows, int64_t n, int64_t k, int64_t lda, int64_t ldb,
                     int64_t bStride, int experts) {
    emu_map_a = emu_encode(a, 2, {k, rows}, {lda * 2}, {64, 128});
    emu_map_b = forward ? emu_encode(b, 3, {k, n, experts}, {ldb * 2, bStride * 2}, {64, 128, 1})
                        : emu_encode(b, 3, {n, k, experts}, {ldb * 2, bStride * 2}, {64, 64, 1});
}
#define EMU_MAPS(...) emu_maps(__VA_ARGS__)
#define EMU_WEIGHT_MAPS(...) emu_weight_maps(__VA_ARGS__)
#else
#define EMU_MAPS(...)
#define EMU_WEIGHT_MAPS(...)
#endif

// The entry of each epilogue (`GG_ENTRIES`): mode 0 plain, 1 bias, 2 activation `act`.
static Kernel forward(int mode, int act) {
    if (mode == 0) return SUFFIXED(grouped_gemm_forward);
    if (mode == 1) return SUFFIXED(grouped_gemm_forward_bias);
    switch (act) {
    case 5: return SUFFIXED(grouped_gemm_forward_act5);
    case 7: return SUFFIXED(grouped_gemm_forward_act7);
    case 8: return SUFFIXED(grouped_gemm_forward_act8);
    case 9: return SUFFIXED(grouped_gemm_forward_act9);
    default: std::abort();
    }
}
// The data gradient plain (`act` 0) or through activation `act`'s backward.
static Kernel dataGradient(int act) {
    switch (act) {
    case 0: return SUFFIXED(grouped_gemm_data_gradient);
    case 5: return SUFFIXED(grouped_gemm_data_gradient_dact5);
    case 7: return SUFFIXED(grouped_gemm_data_gradient_dact7);
    case 8: return SUFFIXED(grouped_gemm_data_gradient_dact8);
    case 9: return SUFFIXED(grouped_gemm_data_gradient_dact9);
    default: std::abort();
    }
}

static void launch(Kernel kernel, Dim grid, int threads, std::function<void(Kernel)> call) {
    emu_tiles = grid;
    if (PERSISTENT) grid = Dim{std::min(3u, grid.x * grid.y * grid.z), 1, 1};
    blockDim = {(unsigned)threads, 1, 1};
    gridDim = grid;
    std::barrier<> block(threads);
    emu_block_barrier = &block;
    std::vector<std::barrier<>*> warps;
    for (int w = 0; w < threads / 32; w++) warps.push_back(new std::barrier<>(32));
    emu_warp_barriers = warps;
    std::vector<std::barrier<>*> groups;
    for (int g = 0; g < (threads + 127) / 128; g++) groups.push_back(new std::barrier<>(128));
    emu_group_barriers = groups;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                std::memset(emu_smem, 0xff, sizeof(emu_smem));   // shared memory starts as garbage (NaN bf16)
                std::vector<std::thread> pool;
                for (int i = 0; i < threads; i++)
                    pool.emplace_back([&, i] { threadIdx = {(unsigned)i, 0, 0}; blockIdx = {x, y, z}; call(kernel); });
                for (auto& th : pool) th.join();
            }
    for (auto* b : warps) delete b;
    for (auto* b : groups) delete b;
}

// Blocks of `grid` one after the other, each `threads` host threads running `body`.
static void run_blocks(Dim grid, int threads, std::function<void()> body) {
    blockDim = {(unsigned)threads, 1, 1};
    gridDim = grid;
    std::barrier<> block(threads);
    emu_block_barrier = &block;
    for (unsigned y = 0; y < grid.y; y++)
        for (unsigned x = 0; x < grid.x; x++) {
            std::vector<std::thread> pool;
            for (int i = 0; i < threads; i++)
                pool.emplace_back([&, i] { threadIdx = {(unsigned)i, 0, 0}; blockIdx = {x, y, 0}; body(); });
            for (auto& th : pool) th.join();
        }
}

static std::mt19937_64 rng(7);
static std::vector<T> randoms(size_t n, double scale) {
    std::normal_distribution<double> d(0, scale);
    std::vector<T> v(n);
    for (auto& x : v) x = ST((acc_t)d(rng));
    return v;
}
static double value(T v) { return (double)LD(v); }
static T poison() { return ST((acc_t)NAN); }
// The host side of CUDAGroupedKernel.groupTable: offsets, then (expert, first row) per row tile.
static std::vector<int> table(const std::vector<int>& sizes, int tileRows, int& rowTiles) {
    std::vector<int> v(sizes.size() + 1, 0);
    for (size_t g = 0; g < sizes.size(); g++) v[g + 1] = v[g] + sizes[g];
    rowTiles = 0;
    for (size_t g = 0; g < sizes.size(); g++)
        for (int s = 0; s < sizes[g]; s += tileRows) { v.push_back((int)g); v.push_back(v[g] + s); rowTiles++; }
    return v;
}
static double activation(int act, double x) {
    switch (act) {
    case 5: return x > 0 ? x : 0;                                                       // relu
    case 7: return x / (1 + std::exp(-x));                                              // silu
    case 8: return 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));   // geluTanh
    case 9: return 0.5 * x * (1 + std::erf(x * 0.7071067811865476));                    // geluErf
    default: std::abort();
    }
}
static double derivative(int act, double x) {
    switch (act) {
    case 5: return x > 0 ? 1 : 0;
    case 7: { double sg = 1 / (1 + std::exp(-x)); return sg * (1 + x * (1 - sg)); }
    case 9: return 0.5 * (1 + std::erf(x * 0.7071067811865476)) + x * 0.3989422804014327 * std::exp(-x * x / 2);
    case 8: { double u = 0.7978845608028654 * (x + 0.044715 * x * x * x), t = std::tanh(u);
              return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * 0.7978845608028654 * (1 + 3 * 0.044715 * x * x); }
    default: std::abort();
    }
}

static int failures = 0;
static void check(const char* what, const std::vector<double>& want, const std::vector<T>& got, double tolerance) {
    double scale = 1e-6, worst = 0;
    for (double w : want) scale = std::fmax(scale, std::fabs(w));
    for (size_t i = 0; i < want.size(); i++) {
        double e = std::fabs(value(got[i]) - want[i]);
        if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;
    }
    bool ok = worst / scale <= tolerance;
    if (!ok) failures++;
    std::printf("%s %-58s relative error %.2e\n", ok ? "ok  " : "FAIL", what, worst / scale);
}

int run_all() {
    const double tolerance = sizeof(T) == 2 ? 1.5e-2 : 1e-5;
    const std::vector<std::vector<int>> groupings = {{0, 150, 1, 70, 0}, {0, 0, 200}, {129, 0, 0, 1, 128, 0}};
    // Partial last K and column tiles; four K tiles wrap the three-stage ring. float32 widths need
    // only be multiples of 4: 132 leaves the data gradient's last K tile one vector deep.
    const int inW = 200, outW = sizeof(T) == 4 ? 132 : 136;
    for (const auto& sizes : groupings) {
        const int E = (int)sizes.size();
        int S = 0; for (int s : sizes) S += s;
        char label[160];
        int rowTiles = 0;
        std::vector<int> tab = table(sizes, TILE_ROWS, rowTiles);
        const int* offsets = tab.data(); const int* tiles = tab.data() + E + 1;
        // The same table built by `grouped_tile_table`, with room for the most tiles S rows can need.
        const int maxTiles = (S + TILE_ROWS - 1) / TILE_ROWS + E;
        std::vector<int> built(E + 1 + 2 * maxTiles, 12345);
        {
            std::vector<int> counts(sizes.begin(), sizes.end());
            blockDim = {1024, 1, 1};
            std::barrier<> block(1024);
            emu_block_barrier = &block;
            std::vector<std::thread> pool;
            for (int i = 0; i < 1024; i++)
                pool.emplace_back([&, i] { threadIdx = {(unsigned)i, 0, 0}; blockIdx = {0, 0, 0};
                                           grouped_tile_table(counts.data(), E, TILE_ROWS, maxTiles, built.data()); });
            for (auto& th : pool) th.join();
            bool same = true;
            for (int i = 0; i < (int)built.size(); i++) {
                int want = i < (int)tab.size() ? tab[i] : ((i - (E + 1)) % 2 == 0 ? -1 : 0);
                same = same && built[i] == want;
            }
            if (!same) failures++;
            std::printf("%s %s S=%d E=%d tile table built on the device\n", same ? "ok  " : "FAIL", FAMILY, S, E);
        }
        std::vector<int> expertOfRow; for (int g = 0; g < E; g++) expertOfRow.insert(expertOfRow.end(), sizes[g], g);
        std::vector<T> x = randoms((size_t)S * inW, 1), w = randoms((size_t)E * outW * inW, 0.2), bias = randoms((size_t)E * outW, 1);
        std::vector<T> gy = randoms((size_t)S * outW, 1), h = randoms((size_t)S * outW, 1);

        // Forward y = x W_gᵀ with each epilogue.
        for (int mode = 0; mode <= 2; mode++)
            for (int act : mode == 2 ? std::vector<int>{5, 7, 8, 9} : std::vector<int>{0}) {
                std::vector<T> y((size_t)S * outW, poison()), pre((size_t)S * outW, poison());
                EMU_MAPS(true, x.data(), w.data(), S, outW, inW, inW, inW, (int64_t)outW * inW, E);
                launch(forward(mode, act), Dim{(unsigned)((outW + TILE_COLS - 1) / TILE_COLS), (unsigned)rowTiles, 1}, THREADS, [&](Kernel k) {
                    k(x.data(), w.data(), y.data(), offsets, tiles, S, outW, inW, inW, inW, outW, (int64_t)outW * inW, 0,
                      mode ? bias.data() : nullptr, pre.data() TILE_ARGS);
                });
                std::vector<double> want((size_t)S * outW), wantPre((size_t)S * outW);
                for (int r = 0; r < S; r++)
                    for (int o = 0; o < outW; o++) {
                        int g = expertOfRow[r];
                        double sum = 0;
                        for (int i = 0; i < inW; i++) sum += value(x[(size_t)r * inW + i]) * value(w[((size_t)g * outW + o) * inW + i]);
                        if (mode >= 1) sum += value(bias[(size_t)g * outW + o]);
                        wantPre[(size_t)r * outW + o] = sum;
                        want[(size_t)r * outW + o] = mode == 2 ? activation(act, sum) : sum;
                    }
                std::snprintf(label, sizeof label, "%s S=%d E=%d forward mode %d act %d", FAMILY, S, E, mode, act);
                check(label, want, y, tolerance);
                if (mode == 2) { std::strcat(label, " (pre-activation)"); check(label, wantPre, pre, tolerance); }
            }

        // The forward again over the device-built table, as a layer runs it: 37 more rows than the
        // groups hold (slots the routing dropped), a grid with room for every tile those rows can
        // need; the blocks past the last tile return, and the rows past the groups stay unwritten.
        {
            const int extra = 37;
            std::vector<T> xs = x; xs.resize((size_t)(S + extra) * inW, ST((acc_t)1));
            std::vector<T> y((size_t)(S + extra) * outW, poison());
            EMU_MAPS(true, xs.data(), w.data(), S + extra, outW, inW, inW, inW, (int64_t)outW * inW, E);
            launch(FORWARD, Dim{(unsigned)((outW + TILE_COLS - 1) / TILE_COLS), (unsigned)maxTiles, 1}, THREADS, [&](Kernel k) {
                k(xs.data(), w.data(), y.data(), built.data(), built.data() + E + 1, S + extra, outW, inW, inW, inW, outW,
                  (int64_t)outW * inW, 0, nullptr, nullptr TILE_ARGS);
            });
            std::vector<double> want((size_t)S * outW);
            for (int r = 0; r < S; r++)
                for (int o = 0; o < outW; o++) {
                    double sum = 0;
                    for (int i = 0; i < inW; i++) sum += value(x[(size_t)r * inW + i]) * value(w[((size_t)expertOfRow[r] * outW + o) * inW + i]);
                    want[(size_t)r * outW + o] = sum;
                }
            std::snprintf(label, sizeof label, "%s S=%d E=%d forward over the device-built table", FAMILY, S, E);
            check(label, want, std::vector<T>(y.begin(), y.begin() + (size_t)S * outW), tolerance);
            bool untouched = true;
            for (size_t i = (size_t)S * outW; i < y.size(); i++) untouched = untouched && std::isnan(value(y[i]));
            if (!untouched) failures++;
            std::printf("%s %s S=%d E=%d rows past the groups left unwritten\n", untouched ? "ok  " : "FAIL", FAMILY, S, E);
        }

        // Data gradient gx = gy W_g, plain and through an activation's backward (aux = h).
        for (int mode : {0, 3})
            for (int act : mode == 3 ? std::vector<int>{5, 7, 8, 9} : std::vector<int>{0}) {
                // Here the product is [S, inW] and the aux matrix (pre-activation) is laid out like it.
                std::vector<T> gx((size_t)S * inW, poison()), aux = randoms((size_t)S * inW, 1);
                EMU_MAPS(false, gy.data(), w.data(), S, inW, outW, outW, inW, (int64_t)outW * inW, E);
                launch(dataGradient(act), Dim{(unsigned)((inW + TILE_COLS - 1) / TILE_COLS), (unsigned)rowTiles, 1}, THREADS, [&](Kernel k) {
                    k(gy.data(), w.data(), gx.data(), offsets, tiles, S, inW, outW, outW, inW, inW, (int64_t)outW * inW, 0,
                      nullptr, aux.data() TILE_ARGS);
                });
                std::vector<double> want((size_t)S * inW);
                for (int r = 0; r < S; r++)
                    for (int i = 0; i < inW; i++) {
                        int g = expertOfRow[r];
                        double sum = 0;
                        for (int o = 0; o < outW; o++) sum += value(gy[(size_t)r * outW + o]) * value(w[((size_t)g * outW + o) * inW + i]);
                        want[(size_t)r * inW + i] = mode == 3 ? sum * derivative(act, value(aux[(size_t)r * inW + i])) : sum;
                    }
                std::snprintf(label, sizeof label, "%s S=%d E=%d data gradient mode %d act %d", FAMILY, S, E, mode, act);
                check(label, want, gx, tolerance);
            }

        // Weight gradient gW_g = gy_gᵀ x_g (zeros for an expert without rows). The kernels walk
        // the units of `grouped_weight_units`, here with chunks of at most 128 rows so the crowded
        // experts are split, and `grouped_weight_finish` (wgmma) or `grouped_weight_sum` (the
        // others) sums their partials.
        const unsigned colTiles = (inW + TILE_COLS - 1) / TILE_COLS, rowTilesW = (outW + TILE_ROWS - 1) / TILE_ROWS;
        const int perUnit = (int)(colTiles * rowTilesW), maxUnits = E + 16, maxSplits = E;
        // Room for every split, then for less than one split expert's partials: there the crowded
        // experts stay whole (`grouped_weight_units` checks the room before it splits). A float32
        // output takes each split expert's first chunk itself (IN_PLACE), as the host asks.
        for (int maxSlots : {64, IN_PLACE ? perUnit - 1 : perUnit}) {
            std::vector<int> units(4 * maxUnits, 12345), splits(3 * maxSplits, 12345), scratch(4 * maxUnits);
            std::vector<float> partials((size_t)maxSlots * PART_FLOATS, NAN);
            {
                run_blocks(Dim{1, 1, 1}, 64, [&] { grouped_weight_units(offsets, E, 128, perUnit, maxUnits, maxSplits, maxSlots,
                                                                       IN_PLACE, units.data(), splits.data(), scratch.data()); });
                int split = 0, crowded = 0;
                for (int i = 0; i < maxSplits; i++) split += splits[3 * i] >= 0;
                for (int g = 0; g < E; g++) crowded += sizes[g] > 128 && maxSlots == 64;
                if (split != crowded) failures++;
                std::printf("%s %s S=%d E=%d weight-gradient units, %d partial slots: %d experts split\n", split == crowded ? "ok  " : "FAIL",
                            FAMILY, S, E, maxSlots, split);
            }
            const Dim weightGrid{colTiles, rowTilesW, (unsigned)maxUnits};
            const int* weightTiles = units.data();
            auto finish = [&](T* gw, T* sums) {
#if PERSISTENT
                run_blocks(Dim{(unsigned)(8 * perUnit), (unsigned)maxSplits, 1}, 128, [&] {
                    grouped_weight_finish(partials.data(), splits.data(), gw, sums, outW, inW, inW, (int64_t)outW * inW, colTiles); });
#else
                run_blocks(Dim{(unsigned)(PART_FLOATS / 1024 * perUnit), (unsigned)maxSplits, 1}, 256, [&] {
                    grouped_weight_sum(partials.data(), splits.data(), gw, outW, inW, inW, (int64_t)outW * inW, colTiles, TILE_ROWS, TILE_COLS,
                                       IN_PLACE); });
#endif
            };
            {
                std::vector<T> gw((size_t)E * outW * inW, poison());
                EMU_WEIGHT_MAPS(gy.data(), x.data(), S, outW, inW, outW, inW);
                emu_work = partials.data();
                launch(WEIGHT_GRADIENT, weightGrid, THREADS, [&](Kernel k) {
                    k(gy.data(), x.data(), gw.data(), offsets, weightTiles, outW, inW, 0, outW, inW, inW, 0, (int64_t)outW * inW, nullptr, nullptr TILE_ARGS);
                });
                finish(gw.data(), nullptr);
                std::vector<double> want((size_t)E * outW * inW, 0);
                for (int r = 0; r < S; r++) {
                    int g = expertOfRow[r];
                    for (int o = 0; o < outW; o++)
                        for (int i = 0; i < inW; i++)
                            want[((size_t)g * outW + o) * inW + i] += value(gy[(size_t)r * outW + o]) * value(x[(size_t)r * inW + i]);
                }
                std::snprintf(label, sizeof label, "%s S=%d E=%d weight gradient, %d slots", FAMILY, S, E, maxSlots);
                check(label, want, gw, tolerance);
                // The wgmma kernel also sums gy's columns per expert (the bias gradient) when given `aux`.
                if (std::strcmp(FAMILY, "wgmma") == 0) {
                    std::vector<T> gw2((size_t)E * outW * inW, poison()), sums((size_t)E * outW, poison());
                    EMU_WEIGHT_MAPS(gy.data(), x.data(), S, outW, inW, outW, inW);
                    std::fill(partials.begin(), partials.end(), NAN);
                    launch(WEIGHT_GRADIENT, weightGrid, THREADS, [&](Kernel k) {
                        k(gy.data(), x.data(), gw2.data(), offsets, weightTiles, outW, inW, 0, outW, inW, inW, 0, (int64_t)outW * inW, nullptr, sums.data() TILE_ARGS);
                    });
                    finish(gw2.data(), sums.data());
                    std::vector<double> wantSums((size_t)E * outW, 0);
                    for (int r = 0; r < S; r++)
                        for (int o = 0; o < outW; o++) wantSums[(size_t)expertOfRow[r] * outW + o] += value(gy[(size_t)r * outW + o]);
                    std::snprintf(label, sizeof label, "%s S=%d E=%d weight gradient with the bias gradient, %d slots", FAMILY, S, E, maxSlots);
                    check(label, want, gw2, tolerance);
                    std::strcat(label, " (column sums)");
                    check(label, wantSums, sums, tolerance);
                }
            }
        }
    }
    std::printf(failures ? "%d FAILED\n" : "all passed\n", failures);
    return failures ? 1 : 0;
}
} // namespace emu

int main() { return emu::run_all(); }
"""

FAMILIES = {
    # name: (entry suffix, tile rows, tile columns, threads, persistent)
    "mma": ("", 128, 128, 256, False),
    "simt": ("", 64, 128, 128, False),
    "wgmma": ("_wgmma", 128, 128, 512, True),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), help="kernel family (default: all)")
    parser.add_argument("--keep", help="write the generated C++ and binaries here")
    args = parser.parse_args()
    compiler = next((c for c in ["clang++", "g++"] if subprocess.run(["which", c], capture_output=True).returncode == 0), None)
    if compiler is None:
        sys.exit("needs clang++ or g++")
    directory = args.keep or tempfile.mkdtemp(prefix="grouped-gemm-")
    os.makedirs(directory, exist_ok=True)
    failed = []
    for family in args.family or sorted(FAMILIES):
        suffix, rows, cols, threads, persistent = FAMILIES[family]
        paste = "##" + suffix if suffix else ""
        tiles = (("#define PERSISTENT 1\n#define TILE_PARAMS , int64_t, int64_t, GHTensorMap, GHTensorMap\n"
                  "#define TILE_ARGS , emu_work, (int64_t)emu_tiles.y, (int64_t)emu_tiles.z, emu_map_a, emu_map_b\n"
                  "#define PART_FLOATS GH_PART_FLOATS\n#define IN_PLACE 0\n") if persistent
                 else f"#define PERSISTENT 0\n#define TILE_PARAMS\n#define TILE_ARGS , emu_work\n#define PART_FLOATS {rows * cols}\n"
                    f"#define IN_PLACE {int(family == 'simt')}\n")
        defines = (tiles + f"#define FAMILY \"{family}\"\n#define TILE_ROWS {rows}\n#define TILE_COLS {cols}\n#define THREADS {threads}\n"
                   f"#define FORWARD grouped_gemm_forward{suffix}\n#define SUFFIXED(NAME) NAME{paste}\n"
                   f"#define WEIGHT_GRADIENT grouped_gemm_weight_gradient{suffix}\n")
        source = os.path.join(directory, f"{family}.cpp")
        with open(source, "w") as f:
            f.write(SHIM + kernel_source(family) + defines + HARNESS)
        binary = os.path.join(directory, family)
        build = subprocess.run([compiler, "-std=c++20", "-O2", "-pthread", "-w", source, "-o", binary], capture_output=True, text=True)
        if build.returncode != 0:
            print(build.stderr[-4000:])
            failed.append(family)
            continue
        if subprocess.run([binary]).returncode != 0:
            failed.append(family)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
