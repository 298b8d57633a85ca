#!/usr/bin/env bash
# On the GPU machine: the grouped-kernel tests, then two packed binaries timed alternately in one
# call (the before/after method of docs/perf-notes.md), each step under its own time limit so a
# hung kernel costs minutes, not the call.
#
#   bash scripts/gpu-ab.sh BEFORE AFTER   # binary names in .gpu/bin, e.g. fastmoe-base fastmoe
#
# Pack AFTER with ../shared/tools/gpu-pack from a from-scratch build (docs/troubleshooting.md, "A
# rebuilt binary aborts"), and copy BEFORE into .gpu/bin. Test output goes to $OUT when it is set.
set -uo pipefail
before=${1:?usage: gpu-ab.sh BEFORE AFTER}; after=${2:?usage: gpu-ab.sh BEFORE AFTER}
cd "$(dirname "$0")/.."
run=.gpu/run.sh
log=${OUT:-/tmp}/tests.txt
timeout 200 bash $run test --no-parallel --filter "CUDARoutingTests|CUDAMoELayerTests|CUDALinearTests" > "$log" 2>&1
status=$?
grep -E "✘|Test run" "$log" | tail -5
echo "== tests exit status $status"
[[ $status == 0 ]] || exit 1
layer() { timeout 100 bash $run "$1" bench moe-layer "${@:2}" 2>&1 | grep "^bf16"; }
for round in 1 2; do
  for bin in "$before" "$after"; do
    echo "== $bin, medium layer, round $round"
    layer "$bin" --tokens 8192 --d-model 512 --hidden 1024 --experts 8 --precision bf16 --iterations 20
  done
done
for bin in "$before" "$after"; do
  echo "== $bin, fine rows"
  layer "$bin" --preset fine --iterations 20
done
for bin in "$before" "$after"; do
  echo "== $bin, medium training step with graphs"
  timeout 60 bash $run "$bin" bench train --preset medium --device cuda --precision bf16 --experts 8 --repeats 30 --cuda-graph 2>&1 \
    | grep -E '"train step|nodes replayed'
done
