#!/usr/bin/env python3
"""Probes how a Hopper GPU reads `wgmma` operands from shared memory, for the layouts
`GroupedGemmHopperKernels` can use (no swizzle; 128-byte swizzle).

    python3 scripts/probe-wgmma.py [--compile-only]

One warpgroup computes D = A·B (four `wgmma.mma_async.m64n128k16.f32.bf16.bf16` steps along K, A
64×64, B 64×128, the descriptors' start moved per step as the kernel does) from random bf16 values,
for both operand kinds (K-contiguous: transpose flag 0; M- or N-contiguous: 1), both layouts, and
with the descriptor's byte offsets as the kernel sets them, and prints the error
of each against numpy. The kernel's reading of the ISA is the row marked "as the kernel": if the
grouped kernel's GPU test fails, this says which assumption the hardware does not share. Needs
libcuda and libnvrtc (CUDA 12.x or 13) and numpy; `--compile-only` checks the source with NVRTC
alone, on a machine without a GPU.
"""
import argparse
import ctypes
import glob
import os
import sys

import numpy as np

SOURCE = r"""
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef unsigned short bf16_t;

__device__ __forceinline__ uint32_t smem_address(const void* p) {
    uint32_t r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

// Byte offset of element (mn, k) of an operand tile with MN extent `extent` and K = 64, as the
// wgmma kernel lays it out (`GroupedGemmHopperKernels`).
// - no swizzle (`sw` 0): 8×8 core matrices of 128 contiguous bytes. K-contiguous (kc): core matrix
//   (mn/8, k/8) at ((mn/8)·8 + k/8)·128: leading (K) offset 128, stride (MN) 1024. MN-contiguous:
//   core matrix (k/8, mn/8) at ((k/8)·(extent/8) + mn/8)·128: leading 16·extent, stride 128.
// - 128-byte swizzle (`sw` 1): rows of 128 bytes whose 16-byte chunk c sits at c ^ (row % 8).
//   K-contiguous: row mn (64 K values), 8-row groups 1024 apart (stride offset 1024). MN-contiguous:
//   blocks of 64 MN values, each 64 K rows of 128 bytes (8192 apart: leading offset), 8-K-row
//   groups 1024 apart (stride offset).
__device__ __forceinline__ int place(int sw, bool kc, int extent, int mn, int k) {
    if (sw == 0)
        return kc ? ((mn / 8) * 8 + k / 8) * 128 + (mn % 8) * 16 + (k % 8) * 2
                  : ((k / 8) * (extent / 8) + mn / 8) * 128 + (k % 8) * 16 + (mn % 8) * 2;
    return kc ? mn * 128 + (((k / 8) ^ (mn % 8)) * 16) + (k % 8) * 2
              : (mn / 64) * 8192 + k * 128 + ((((mn % 64) / 8) ^ (k % 8)) * 16) + (mn % 8) * 2;
}
// The descriptor's leading and stride byte offsets for `place`, and the start address step per 16
// of K.
__device__ __forceinline__ void offsets(int sw, bool kc, int extent, uint32_t& lead, uint32_t& stride, uint32_t& kStep) {
    if (sw == 0) { lead = kc ? 128 : 16 * extent; stride = kc ? 1024 : 128; kStep = 2 * lead; return; }
    lead = kc ? 16 : 8192; stride = 1024; kStep = kc ? 32 : 2048;
}

template <int TA, int TB>
__device__ __forceinline__ void wgmma(float* d, uint64_t da, uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {REGISTERS}, %64, %65, p, 1, 1, %67, %68;\n}\n"
                 : OUTPUTS
                 : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));
}

// a: A row-major 64×64 (m, k); b: B as 128×64 (n, k); d: 64×128 row-major. Four wgmma steps of 16 K.
template <int TA, int TB>
__device__ void probe(const bf16_t* a, const bf16_t* b, float* d, int swap, int sw) {
    __shared__ __align__(1024) unsigned char sa[64 * 64 * 2], sb[128 * 64 * 2];
    const int t = threadIdx.x;
    for (int i = t; i < 64 * 64; i += 128) *(bf16_t*)(sa + place(sw, TA == 0, 64, i / 64, i % 64)) = a[i];
    for (int i = t; i < 128 * 64; i += 128) *(bf16_t*)(sb + place(sw, TB == 0, 128, i / 64, i % 64)) = b[i];
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    uint32_t leadA, strideA, stepA, leadB, strideB, stepB;
    offsets(sw, TA == 0, 64, leadA, strideA, stepA);
    offsets(sw, TB == 0, 128, leadB, strideB, stepB);
    if (swap) { uint32_t x = leadA; leadA = strideA; strideA = x; x = leadB; leadB = strideB; strideB = x; }
    const uint64_t layout = sw ? 1ull << 62 : 0;
    uint64_t da = (uint64_t)((smem_address(sa) & 0x3FFFF) >> 4) | ((uint64_t)(leadA >> 4) << 16) | ((uint64_t)(strideA >> 4) << 32) | layout;
    uint64_t db = (uint64_t)((smem_address(sb) & 0x3FFFF) >> 4) | ((uint64_t)(leadB >> 4) << 16) | ((uint64_t)(strideB >> 4) << 32) | layout;
    float acc[64];
    for (int i = 0; i < 64; i++) acc[i] = 0.f;
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    for (int kk = 0; kk < 4; kk++) wgmma<TA, TB>(acc, da + kk * (stepA >> 4), db + kk * (stepB >> 4));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    for (int i = 0; i < 64; i++) asm volatile("" : "+f"(acc[i]) :: "memory");
    // acc[4j + 2h + e]: row 16·warp + lane/4 + 8h, column 8j + 2·(lane%4) + e.
    const int warp = t / 32, lane = t % 32;
    for (int j = 0; j < 16; j++)
        for (int h = 0; h < 2; h++)
            for (int e = 0; e < 2; e++)
                d[(16 * warp + lane / 4 + 8 * h) * 128 + 8 * j + 2 * (lane % 4) + e] = acc[4 * j + 2 * h + e];
}

extern "C" __global__ void probe_kk(const bf16_t* a, const bf16_t* b, float* d, int swap, int sw) { probe<0, 0>(a, b, d, swap, sw); }
extern "C" __global__ void probe_km(const bf16_t* a, const bf16_t* b, float* d, int swap, int sw) { probe<0, 1>(a, b, d, swap, sw); }
extern "C" __global__ void probe_mk(const bf16_t* a, const bf16_t* b, float* d, int swap, int sw) { probe<1, 0>(a, b, d, swap, sw); }
extern "C" __global__ void probe_mm(const bf16_t* a, const bf16_t* b, float* d, int swap, int sw) { probe<1, 1>(a, b, d, swap, sw); }
"""


def source():
    registers = ", ".join(f"%{i}" for i in range(64))
    outputs = ", ".join(f'"+f"(d[{i}])' for i in range(64))
    return SOURCE.replace("REGISTERS", registers).replace("OUTPUTS", outputs)


def load(names):
    """The first of `names` (sonames, searched as the dynamic linker does) that loads, or the same
    names under the usual CUDA install folders."""
    folders = [""] + sorted(glob.glob("/usr/local/cuda*/lib64/")) + ["/usr/lib/x86_64-linux-gnu/"]
    for folder in folders:
        for name in names:
            try:
                return ctypes.CDLL(folder + name)
            except OSError:
                continue
    sys.exit(f"cannot load any of {names}; add its folder to LD_LIBRARY_PATH")


def compile_cubin(nvrtc):
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source().encode(), b"probe.cu", 0, None, None) == 0
    options = [b"--gpu-architecture=sm_90a", b"-std=c++17"]
    status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    if status != 0:
        sys.exit("NVRTC failed:\n" + log.value.decode())
    nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetCUBIN(program, cubin)
    return cubin


def bf16(values):
    """float32 → bfloat16 bits (round to nearest even) and the float32 they stand for."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return rounded, (rounded.astype(np.uint32) << 16).view(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compile-only", action="store_true")
    args = parser.parse_args()
    nvrtc = load(["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"])
    cubin = compile_cubin(nvrtc)
    print(f"compiled for sm_90a: {len(cubin.raw)} bytes")
    if args.compile_only:
        return
    cuda = load(["libcuda.so.1", "libcuda.so"])

    def check(status, what):
        if status != 0:
            sys.exit(f"{what} failed with CUresult {status}")

    check(cuda.cuInit(0), "cuInit")
    device, context, module = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p()
    check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
    check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    check(cuda.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    check(cuda.cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")

    rng = np.random.default_rng(5)
    a_bits, a = bf16(rng.standard_normal((64, 64)))
    b_bits, b = bf16(rng.standard_normal((128, 64)))   # B stored (n, k)
    want = a.astype(np.float64) @ b.astype(np.float64).T

    def buffer(nbytes, host=None):
        pointer = ctypes.c_uint64()
        check(cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(nbytes)), "cuMemAlloc")
        if host is not None:
            check(cuda.cuMemcpyHtoD_v2(pointer, host.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(nbytes)), "cuMemcpyHtoD")
        return pointer

    da, db, dd = buffer(a_bits.nbytes, a_bits), buffer(b_bits.nbytes, b_bits), buffer(64 * 128 * 4)
    print("layout      operands (A, B)              descriptor offsets   max |error| / max |D|")
    for name, kinds in [("probe_kk", "K-contig, K-contig"), ("probe_km", "K-contig, N-contig"),
                        ("probe_mk", "M-contig, K-contig"), ("probe_mm", "M-contig, N-contig")]:
        function = ctypes.c_void_p()
        check(cuda.cuModuleGetFunction(ctypes.byref(function), module, name.encode()), "cuModuleGetFunction")
        # (Swapped descriptor offsets can address past the operands' shared memory, and an illegal
        # address ends the context: the kernel's own offsets only.)
        for sw, swap in [(0, 0), (1, 0)]:
            swap_arg, sw_arg = ctypes.c_int(swap), ctypes.c_int(sw)
            params = (ctypes.c_void_p * 5)(ctypes.addressof(da), ctypes.addressof(db), ctypes.addressof(dd), ctypes.addressof(swap_arg),
                                           ctypes.addressof(sw_arg))
            check(cuda.cuLaunchKernel(function, 1, 1, 1, 128, 1, 1, 0, None, params, None), "cuLaunchKernel")
            check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
            got = np.zeros((64, 128), dtype=np.float32)
            check(cuda.cuMemcpyDtoH_v2(got.ctypes.data_as(ctypes.c_void_p), dd, ctypes.c_size_t(got.nbytes)), "cuMemcpyDtoH")
            error = np.abs(got - want).max() / np.abs(want).max()
            label = "as the kernel" if swap == 0 else "swapped"
            layout = "128B swizzle" if sw else "no swizzle"
            print(f"{layout:12s}{kinds:28s} {label:20s} {error:.2e}{'  <- matches' if error < 1e-3 else ''}")


if __name__ == "__main__":
    main()
