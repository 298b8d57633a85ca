#!/usr/bin/env python3
"""Names the frames of a `FASTMOE_HOST_PROFILE` file and prints the functions by self and inclusive
share of the samples.

    python3 scripts/fold-host-profile.py PROFILE BINARY [--top N] [--collapse]

BINARY is the same build of `fastmoe` that wrote PROFILE (frames are module-relative offsets; `nm`
on that binary names them, `swift demangle` makes them readable). Frames in other modules (libc,
libcuda, ...) are named by their module. `--collapse` also prints the folded stacks with names,
for a flame-graph tool.
"""
import argparse
import bisect
import collections
import subprocess


def symbols(binary):
    out = subprocess.run(["nm", "-n", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
    addresses, names = [], []
    for line in out.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) == 3 and parts[1] in "tTwW":
            addresses.append(int(parts[0], 16))
            names.append(parts[2])
    return addresses, names


def demangle(names):
    try:
        out = subprocess.run(["swift", "demangle", "--simplified", "--compact"], input="\n".join(names), capture_output=True,
                             text=True, check=True).stdout.splitlines()
        return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile")
    parser.add_argument("binary")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--collapse", action="store_true")
    args = parser.parse_args()
    profile, binary = args.profile, args.binary.split("/")[-1]
    top = args.top
    addresses, names = symbols(args.binary)
    stacks = []
    for line in open(profile):
        if line.startswith("#") or not line.strip():
            continue
        count, stack = line.split(" ", 1)
        stacks.append((int(count), stack.strip().split(";")))

    def name(frame, leaf):
        module, _, offset = frame.partition("+0x")
        if module != binary or not offset:
            return module
        # A return address points after its call: look up the byte before it, except in the leaf.
        i = bisect.bisect_right(addresses, int(offset, 16) - (0 if leaf else 1)) - 1
        return names[i] if i >= 0 else frame

    named = [(c, [name(f, i == len(s) - 1) for i, f in enumerate(s)]) for c, s in stacks]
    readable = demangle(sorted({f for _, s in named for f in s}))
    total = sum(c for c, _ in named)
    own, inclusive = collections.Counter(), collections.Counter()
    for c, s in named:
        own[readable[s[-1]]] += c
        for f in {readable[f] for f in s}:
            inclusive[f] += c
    print(f"{total} samples")
    for title, table in (("self", own), ("inclusive", inclusive)):
        print(f"\n== by {title} time ==")
        for f, c in table.most_common(top):
            print(f"{100 * c / total:6.1f}%  {f[:160]}")
    if args.collapse:
        for c, s in named:
            print(";".join(readable[f] for f in s), c)


if __name__ == "__main__":
    main()
