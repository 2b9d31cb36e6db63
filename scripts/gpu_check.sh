#!/usr/bin/env bash
# One-GPU check in under 8 minutes: the GPU-marked tests, a bf16 + channels_last ResNet-50
# train-step benchmark (none/se/cbam/eca), a CIFAR ResNet-20 epoch with the in-memory loader
# on the GPU, and the lines docs/benchmarks.md needs (date and GPU model included).
#   scripts/gpu_check.sh              # on a machine with a CUDA GPU
#   scripts/gpu_check.sh --dry-run    # anywhere: CPU, toy sizes, no pytest (a smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
OUT="${GPU_CHECK_OUT:-gpu_check_$(date +%Y%m%d_%H%M%S)}"
mkdir -p "$OUT"

if [ "${1:-}" != "--dry-run" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  echo "== GPU-marked tests"
  timeout 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -15
  echo "== benchmarks"
  timeout 300 "$PY" scripts/gpu_check.py --json "$OUT/gpu_check.json" | tee "$OUT/gpu_check.txt"
else
  echo "== dry run (CPU, toy sizes; no pytest)"
  timeout 600 "$PY" scripts/gpu_check.py --dry-run --json "$OUT/gpu_check.json"
fi
echo "results in $OUT/"
