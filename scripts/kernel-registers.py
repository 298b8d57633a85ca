#!/usr/bin/env python3
"""Compiles the grouped GEMM kernels with NVRTC for sm_90 and prints what ptxas reports for each
entry: registers, spill stores and loads, shared memory. For machines without a GPU: NVRTC needs
no device, only its library (`pip install nvidia-cuda-nvrtc-cu12` puts one under site-packages).

    python3 scripts/kernel-registers.py [--dtype f32|bf16] [--filter REGEX] [--nvrtc PATH] [--mix [--nvdisasm PATH]]

A change to a kernel's inner loop can push it past the registers that let three (fp32) or two
(bf16) blocks share an SM, or make it spill: both show here before any GPU time is spent.

`--mix` also disassembles each entry (nvdisasm: on PATH, under /usr/local/cuda*/bin, or taken
from the Triton wheel, `pip download triton --no-deps` then unzip its
`triton/backends/nvidia/bin/nvdisasm`) and prints its main loop's instruction mix: the loop is the
backward branch that spans the most FMA or MMA instructions. A CUDA-core kernel that issues
fewer multiply-adds per instruction than another shows it here (perf-notes, change 41).
"""
import argparse
import collections
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

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


def find_nvdisasm(explicit):
    if explicit:
        return explicit
    found = shutil.which("nvdisasm") or next(iter(sorted(glob.glob("/usr/local/cuda*/bin/nvdisasm"))), None)
    return found or sys.exit("no nvdisasm found: pass --nvdisasm PATH (see --help)")


def loop_mixes(sass):
    """Per function in nvdisasm's output: (instructions, main loop's instruction counts by opcode)."""
    sections = re.split(r"//-+ \.text\.(\w+) -+", sass)
    for name, body in zip(sections[1::2], sections[2::2]):
        ops, labels, pending = [], {}, []
        for line in body.split("\n"):
            if m := re.match(r"^(\.L_x_\d+):", line):
                pending.append(m.group(1))
            elif m := re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)((?:\.[\w]+)*)\s*(.*?)\s*;", line):
                address = int(m.group(1), 16)
                labels.update((label, address) for label in pending)
                pending = []
                # Loads and stores keep their width (LDS.128 against LDS), other opcodes their name.
                op = m.group(2) + (m.group(3) if m.group(2) in ("LDS", "STS", "LDG", "LDGSTS") else "")
                ops.append((address, op, m.group(4)))
        best = (0, [])
        for address, op, operands in ops:
            target = re.search(r"(\.L_x_\d+)", operands) if op == "BRA" else None
            if target and labels.get(target.group(1), address) < address:
                span = [o[1] for o in ops if labels[target.group(1)] <= o[0] <= address]
                multiplies = sum(1 for o in span if o in ("FFMA", "HMMA"))
                best = max(best, (multiplies, span), key=lambda b: b[0])
        yield name, len(ops), collections.Counter(best[1])


def print_mixes(nvrtc, program, nvdisasm, pattern):
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetCUBIN(program, cubin)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin.raw)
        f.flush()
        sass = subprocess.run([nvdisasm, f.name], capture_output=True, text=True, check=True).stdout
    print("\nmain loops (instructions, multiply-adds' share, the most frequent opcodes):")
    for name, total, loop in loop_mixes(sass):
        if not re.search(pattern, name) or not loop:
            continue
        count = sum(loop.values())
        multiplies = loop["FFMA"] + loop["HMMA"]
        common = ", ".join(f"{op} {n}" for op, n in loop.most_common(8))
        print(f"{name:52} {count:>5} of {total:>5}, {multiplies / count:6.1%}  {common}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    parser.add_argument("--filter", default="", help="only entries whose name matches")
    parser.add_argument("--nvrtc", help="path of libnvrtc.so")
    parser.add_argument("--mix", action="store_true", help="also print each entry's main-loop instruction mix (needs nvdisasm)")
    parser.add_argument("--nvdisasm", help="path of nvdisasm")
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
    if args.mix:
        print_mixes(nvrtc, program, find_nvdisasm(args.nvdisasm), args.filter)


if __name__ == "__main__":
    main()
