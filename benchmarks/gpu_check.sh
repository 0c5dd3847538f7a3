#!/usr/bin/env bash
# One command for a CUDA machine: build, GPU tests against the float64 reference, the CPU kernel's
# tests at that machine's SIMD level, and the GPU benchmarks. Writes everything under $OUT
# (default results/gpu) and ends with a summary table. Each step has a time limit; the whole
# script stays under 10 minutes even when every step hits its limit.
#
#   bash benchmarks/gpu_check.sh            # or OUT=dir bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "=== $name"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "$name rc=$rc ($((SECONDS - t0)) s)" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || status=1
}

: >"$OUT/summary.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
step build 90 $PY -m pip install --no-build-isolation --no-deps --no-cache-dir -e .
step info 20 $PY -m mia_fast info
# -W default: a new warning of this machine's torch/triton versions is reported, not fatal here.
step gpu_tests 80 $PY -m pytest -q --maxfail=5 -W default -m gpu -p no:cacheprovider tests
# The per-thread-maximum loop variant of the token-statistics kernel, compiled on this GPU.
step gpu_tests_slot_shift 70 env MIA_FAST_TRITON_SLOT_SHIFT=1 $PY -m pytest -q --maxfail=5 -W default \
  -p no:cacheprovider tests/test_triton_kernels.py -k test_slot_shift
step cpu_tests 60 $PY -m pytest -q --maxfail=5 -W default -m "not slow and not gpu" -p no:cacheprovider \
  tests/test_token_stats.py tests/test_fused_linear.py
step bench_token_stats 110 $PY benchmarks/bench_token_stats.py --device cuda --budget 1 --repeats 7 --rows 4096 \
  --vocab 32000,128256 --dtypes float32,bfloat16 --out "$OUT/bench_token_stats.md" --json "$OUT/bench_token_stats.json"
# Kernel alone vs a whole call (host work, launches, the status-word sync): both loop variants,
# the default tiles and 16 logits per thread (which only the per-thread variant fits in 80 registers).
step triton_probe 80 $PY benchmarks/triton_probe.py --rows 4096 --vocab 32000,128256 --dtypes float32,bfloat16 \
  --slot-shift 0,1 --configs ";2048,4"
step bench_fused_linear 80 $PY benchmarks/bench_fused_linear.py --device cuda --repeats 5 \
  --out "$OUT/bench_fused_linear.md" --json "$OUT/bench_fused_linear.json"
echo "=== summary"
cat "$OUT/summary.txt"
for f in "$OUT"/bench_*.md; do [ -f "$f" ] && { echo "--- $f"; cat "$f"; }; done
exit $status
