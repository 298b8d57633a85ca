#!/usr/bin/env bash
# On the GPU machine: one fwd+bwd of an MoE layer under ncu, µs by kernel (each kernel timed alone).
#
#   bash scripts/gpu-layer-profile.sh BINARY [bench moe-layer flags...]
#   e.g. bash scripts/gpu-layer-profile.sh fastmoe --tokens 8192 --d-model 512 --hidden 1024 --experts 8 --precision bf16
set -uo pipefail
bin=${1:?usage: gpu-layer-profile.sh BINARY [bench moe-layer flags]}; shift
cd "$(dirname "$0")/.."
out=${OUT:-/tmp}
bash .gpu/run.sh "$bin" --help > /dev/null   # unpacks the Swift runtime into /tmp/swift-runtime
export LD_LIBRARY_PATH=/tmp/swift-runtime${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
csv="$out/layer-$bin.csv"
timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
  --print-kernel-base function .gpu/bin/"$bin" bench moe-layer --device cuda --moe-only --iterations 1 \
  --warmup 0 --input-sets 1 "$@" > "$csv" 2>&1 || echo "== ncu exit status $?"
python3 scripts/ncu-kernel-table.py "$csv" --top 30
