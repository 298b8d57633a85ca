#!/usr/bin/env python3
"""PyTorch's dense line, measured the way `fastmoe bench moe-layer` measures ours.

On the GPU machine (python3 there holds PyTorch): for each ROWS,D,H[,DTYPE] given, one MLP
`Linear(D,H) -> GELU(tanh) -> Linear(H,D)` with biases over ROWS rows, forward + backward (the median
of --iterations after --warmup, CUDA events, 3 input sets rotated, parameter gradients set to None
before each), then its six GEMMs each timed alone and the six chained in one timed region. One JSON
line per shape: the question is how far PyTorch's own dense line sits from its GEMMs.

    python3 scripts/torch-dense-line.py 32768,2048,1408 131072,2048,1408 16384,4096,14336 8192,1024,4096,fp32
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def median_ms(body, prepare=lambda i: None, iterations=20, warmup=5):
    times = []
    for i in range(warmup + iterations):
        prepare(i)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        body(i)
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(rows, d, h, dtype, iterations, warmup):
    dev = "cuda"
    fc1 = torch.nn.Linear(d, h, device=dev, dtype=dtype)
    fc2 = torch.nn.Linear(h, d, device=dev, dtype=dtype)
    xs = [torch.randn(rows, d, device=dev, dtype=dtype) for _ in range(3)]
    dys = [torch.randn(rows, d, device=dev, dtype=dtype) for _ in range(3)]
    state = {}

    def prepare(i):
        for p in (*fc1.parameters(), *fc2.parameters()):
            p.grad = None
        state["x"] = xs[i % 3].detach().requires_grad_()

    def layer(i):
        y = fc2(F.gelu(fc1(state["x"]), approximate="tanh"))
        y.backward(dys[i % 3])

    dense = median_ms(layer, prepare, iterations, warmup)

    def operands(a_shape, b_shape, out_shape):
        return (torch.randn(*a_shape, device=dev, dtype=dtype), torch.randn(*b_shape, device=dev, dtype=dtype),
                torch.empty(*out_shape, device=dev, dtype=dtype))

    # The same six products as `denseGemmMilliseconds`: fc1 X·W1ᵀ, fc2 A·W2ᵀ, dA = dY·W2, dW2 = dYᵀ·A,
    # dX = dH·W1, dW1 = dHᵀ·X (transposes as views, as the layer's own calls take them).
    problems = [
        (operands((rows, d), (h, d), (rows, h)), lambda a, b, o: torch.mm(a, b.t(), out=o)),
        (operands((rows, h), (d, h), (rows, d)), lambda a, b, o: torch.mm(a, b.t(), out=o)),
        (operands((rows, d), (d, h), (rows, h)), lambda a, b, o: torch.mm(a, b, out=o)),
        (operands((rows, d), (rows, h), (d, h)), lambda a, b, o: torch.mm(a.t(), b, out=o)),
        (operands((rows, h), (h, d), (rows, d)), lambda a, b, o: torch.mm(a, b, out=o)),
        (operands((rows, h), (rows, d), (h, d)), lambda a, b, o: torch.mm(a.t(), b, out=o)),
    ]
    gemms = [lambda i, ops=ops, f=f: f(*ops) for ops, f in problems]
    alone = [median_ms(g, iterations=iterations, warmup=warmup) for g in gemms]
    chained = median_ms(lambda i: [g(i) for g in gemms], iterations=iterations, warmup=warmup)
    return {
        "bench": "torch-dense-line", "torch": torch.__version__, "rows": rows, "D": d, "H": h,
        "dtype": str(dtype).removeprefix("torch."), "dense_fwd_bwd_ms": dense, "gemm_ms": alone,
        "gemm_sum_ms": sum(alone), "gemm_chain_ms": chained,
        "dense_over_gemm_sum": dense / sum(alone), "dense_over_gemm_chain": dense / chained,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", nargs="+", help="ROWS,D,H[,bf16|fp32]")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    for shape in args.shapes:
        fields = shape.split(",")
        rows, d, h = map(int, fields[:3])
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[fields[3] if len(fields) > 3 else "bf16"]
        print(json.dumps(measure(rows, d, h, dtype, args.iterations, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
