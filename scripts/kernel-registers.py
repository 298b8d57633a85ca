#!/usr/bin/env python3
"""Compiles the grouped GEMM kernels with NVRTC for sm_90 and prints what ptxas reports for each
entry: registers, spill stores and loads, shared memory. For machines without a GPU: NVRTC needs
no device, only its library (`pip install nvidia-cuda-nvrtc-cu12` puts one under site-packages).

    python3 scripts/kernel-registers.py [--dtype f32|bf16] [--filter REGEX] [--nvrtc PATH]

A change to a kernel's inner loop can push it past the registers that let three (fp32) or two
(bf16) blocks share an SM, or make it spill: both show here before any GPU time is spent.
"""
import argparse
import ctypes
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "Sources/Tensors/CUDA/Kernels")


def raw_strings(name):
    text = open(os.path.join(KERNELS, name)).read()
    return re.findall(r'#"""\n(.*?)"""#', text, re.S)


def module_source(dtype):
    """The grouped kernels as `CUDABackend.moduleSource` puts them in a module, with what they use."""
    prelude = raw_strings("KernelPrelude.swift")[0]
    unary = raw_strings("ElementwiseKernels.swift")[0]
    common, kernels = raw_strings("GroupedGemmKernels.swift")[:2]
    macro = "FM_F32" if dtype == "f32" else "FM_BF16"
    return "\n".join([f"#define {macro}", prelude, unary, common, kernels])


def find_nvrtc(explicit):
    if explicit:
        return explicit
    for pattern in ["/usr/local/cuda*/lib64/libnvrtc.so*", os.path.expanduser("~/.pyenv/versions/*/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so*"),
                    "/usr/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so*"]:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    sys.exit("no libnvrtc found: pass --nvrtc PATH")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    parser.add_argument("--filter", default="", help="only entries whose name matches")
    parser.add_argument("--nvrtc", help="path of libnvrtc.so")
    args = parser.parse_args()
    nvrtc = ctypes.CDLL(find_nvrtc(args.nvrtc))
    program = ctypes.c_void_p()
    source = module_source(args.dtype).encode()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(program), source, b"grouped.cu", 0, None, None) != 0:
        sys.exit("nvrtcCreateProgram failed")
    options = [b"--gpu-architecture=sm_90", b"--std=c++17", b"--ptxas-options=-v"]
    status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    text = log.value.decode(errors="replace")
    if status != 0:
        sys.exit(text[-4000:])
    # ptxas prints, per entry: "Compiling entry function 'name'", then the spill line, then "Used N registers".
    entry, spills = None, ""
    for line in text.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            entry = m.group(1)
        elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            spills = f"spill stores {m.group(1)} B, loads {m.group(2)} B"
        elif (m := re.search(r"Used (\d+) registers(.*)", line)) and entry and re.search(args.filter, entry):
            print(f"{entry:52} {m.group(1):>4} registers  {spills}{m.group(2)}")


if __name__ == "__main__":
    main()
