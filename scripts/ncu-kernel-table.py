#!/usr/bin/env python3
"""Per-kernel time tables from `ncu --csv --print-units base --metrics gpu__time_duration.sum` output.

    ncu-kernel-table.py A.csv [A0.csv] [--vs B.csv [B0.csv]] [--steps N] [--top 40]

Sums each kernel name's time in a run, minus the same sums in a shorter run of the same command
(A0: the same program with N fewer steps, so set-up, warm-up and the bench's ceiling GEMMs cancel),
divides by N and prints µs a step by kernel, largest first; with --vs, B's table beside it and the
difference A - B. ncu times each kernel alone, serialised: the sums are kernel time, not the
step's wall time.
"""
import argparse, csv, collections, sys


def kernels(path):
    rows, header = [], None
    with open(path, errors="replace") as f:
        for line in f:
            if header is None:
                if line.startswith('"ID"'):
                    header = next(csv.reader([line]))
                continue
            if not line.startswith('"'):
                continue
            rec = dict(zip(header, next(csv.reader([line]))))
            if rec.get("Metric Name") != "gpu__time_duration.sum":
                continue
            value = float(rec["Metric Value"].replace(",", ""))
            scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}.get(rec.get("Metric Unit", "nsecond"), 1e-3)
            rows.append((int(rec["ID"]), rec["Kernel Name"], value * scale))
    if header is None:
        sys.exit(f"{path}: no ncu CSV header (a line starting with \"ID\")")
    rows.sort()
    return rows


def table(paths, steps):
    sums, counts = collections.defaultdict(float), collections.defaultdict(float)
    for sign, path in zip((1, -1), paths):
        for _, name, us in kernels(path):
            sums[name] += sign * us / steps
            counts[name] += sign / steps
    keep = [k for k in sums if abs(counts[k]) > 1e-9 or abs(sums[k]) > 0.05]
    return {k: sums[k] for k in keep}, {k: counts[k] for k in keep}, sum(counts[k] for k in keep)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a", nargs="+"); ap.add_argument("--vs", nargs="+")
    ap.add_argument("--steps", type=float, default=1); ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    a, ac, an = table(args.a, args.steps)
    if not args.vs:
        print(f"{an:.0f} kernels a step; {sum(a.values()):.1f} µs a step")
        for name in sorted(a, key=a.get, reverse=True)[: args.top]:
            print(f"{a[name]:10.1f} µs {ac[name]:7.1f}×  {name[:110]}")
        return
    b, bc, bn = table(args.vs, args.steps)
    print(f"A: {an:.0f} kernels, {sum(a.values()):.1f} µs a step; B: {bn:.0f} kernels, {sum(b.values()):.1f} µs a step")
    print(f"{'A µs':>9} {'B µs':>9} {'A-B':>9} {'A n':>7} {'B n':>7}  kernel")
    names = set(a) | set(b)
    for name in sorted(names, key=lambda k: abs(a.get(k, 0) - b.get(k, 0)), reverse=True)[: args.top]:
        print(f"{a.get(name, 0):9.1f} {b.get(name, 0):9.1f} {a.get(name, 0) - b.get(name, 0):9.1f} "
              f"{ac.get(name, 0):7.1f} {bc.get(name, 0):7.1f}  {name[:100]}")


if __name__ == "__main__":
    main()
