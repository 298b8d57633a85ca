#!/usr/bin/env bash
# On the GPU machine: where a training step's kernel time goes, MoE against its dense twin, by
# kernel name (ncu times each kernel alone, so the sums are kernel time, not the step's wall time).
#
#   bash scripts/gpu-step-profile.sh [BINARY] [PRESET] [PRECISION]   # defaults: fastmoe medium bf16
#
# Each model runs `bench train` eagerly twice under ncu, with 3 and 1 timed steps; the difference is
# two steps with set-up, warm-up and the bench's ceiling GEMMs cancelled. CSVs go to $OUT.
set -uo pipefail
bin=${1:-fastmoe}; preset=${2:-medium}; precision=${3:-bf16}
cd "$(dirname "$0")/.."
out=${OUT:-/tmp}
bash .gpu/run.sh "$bin" --help > /dev/null   # unpacks the Swift runtime into /tmp/swift-runtime
export LD_LIBRARY_PATH=/tmp/swift-runtime${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for experts in 8 0; do
  for repeats in 3 1; do
    timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
      --print-kernel-base function .gpu/bin/"$bin" bench train --preset "$preset" --device cuda \
      --precision "$precision" --experts "$experts" --repeats "$repeats" > "$out/step-e$experts-r$repeats.csv" 2>&1 \
      || echo "== ncu exit status $? for experts $experts, repeats $repeats"
  done
done
python3 scripts/ncu-kernel-table.py "$out"/step-e8-r3.csv "$out"/step-e8-r1.csv \
  --vs "$out"/step-e0-r3.csv "$out"/step-e0-r1.csv --steps 2 --top 60
