#!/usr/bin/env bash
# On the GPU machine: training steps as CUDA graphs, the MoE model (8 experts, top-2) against its
# dense twin, for each PRESET:PRECISION given (ms a step, the median of 30), with the GEMM ceiling
# each run measured.
#
#   bash scripts/gpu-steps.sh BINARY small:bf16 small:fp32 medium:bf16
set -uo pipefail
bin=${1:?usage: gpu-steps.sh BINARY PRESET:PRECISION...}; shift
cd "$(dirname "$0")/.."
for pair in "$@"; do
  preset=${pair%%:*}; precision=${pair##*:}
  for experts in 8 0; do
    out=$(timeout 120 bash .gpu/run.sh "$bin" bench train --preset "$preset" --device cuda --precision "$precision" \
            --experts "$experts" --repeats 30 --cuda-graph 2>&1)
    ms=$(grep -o '"train step[^}]*' <<< "$out" | grep -o '"ms":[0-9.]*' | cut -d: -f2)
    # The ceiling the bench measured in the same run: a 4096³ GEMM in the step's dtype, GFLOP/s.
    ceiling=$(grep -o '(ceiling)[^}]*' <<< "$out" | grep -o '"rate":[0-9.]*' | cut -d: -f2)
    echo "$bin $preset $precision experts=$experts: ${ms:-failed} ms (ceiling ${ceiling:-?} GFLOP/s)"
  done
done
