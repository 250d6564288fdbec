#!/usr/bin/env bash
# The GPU part of the speed bench, in under 8 minutes on one H100 or H200.
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # default benchmarks/results/gpu-<UTC date>
#
# Runs `rismvdr bench speed --quick` with a 7-minute deadline (measurements not started by
# then are recorded as skipped; the report is written either way), in priority order:
#   1. the original formula on the 361 x 181 x 8 grid: NumPy on the CPU (the ratio's
#      denominator) and PyTorch on the GPU (when torch is importable), one scene at a time;
#   2. rismvdr dense (batch 64) and Woodbury (batch 256) 2.5D MVDR maps on that grid;
#   3. the shared detector (batch 256), the train step (seed backbone and refiner, batch 256);
#   4. every localization method end to end (256 scenes in one batch of 256).
# Then the Woodbury path once more with `--precision fast` (TF32) for comparison, if time is
# left. Needs jax with CUDA, flax, optax, orbax-checkpoint, scipy, matplotlib and tqdm (all in
# the GPU image); rismvdr itself is taken from this checkout (no install, no network).
# Set ALLOW_CPU=1 to dry-run the script on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%MZ)}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
start=$(date +%s)

backend=$($PY -c "import jax; print(jax.default_backend())")
if [ "$backend" = "cpu" ] && [ "${ALLOW_CPU:-0}" != "1" ]; then
  echo "benchmarks/gpu.sh: JAX sees no GPU (backend cpu); set ALLOW_CPU=1 to run anyway" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  > "$OUT/nvidia-smi.csv" 2>/dev/null || echo "no nvidia-smi" > "$OUT/nvidia-smi.csv"

# Main run: 420 s budget (the first worker also pays CUDA start-up and compilation).
$PY -m rismvdr.cli bench speed --out "$OUT" --quick --deadline-s "${DEADLINE_S:-420}" --timeout-s 150 -q \
  2>&1 | tee "$OUT/speed.log"

# TF32 comparison on the Woodbury path, if at least 45 s of the 8 minutes are left.
left=$(( ${TOTAL_S:-470} - ($(date +%s) - start) ))
if [ "$left" -ge 45 ]; then
  $PY -m rismvdr.cli bench speed --out "$OUT/tf32" --quick --parts spectrum --precision fast \
    --deadline-s "$((left - 10))" --timeout-s 120 -q 2>&1 | tee "$OUT/tf32.log" || true
fi
echo "gpu.sh: done in $(( $(date +%s) - start )) s; report: $OUT/speed.md"
