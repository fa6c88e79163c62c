#!/usr/bin/env bash
# One GPU session's validation (device tool, from the repo root). Each stage fits one 10-minute device call:
#   bash bench/gpu_check.sh tests     # install + GPU test tier (pytest -m gpu) + model tests on CUDA
#   bash bench/gpu_check.sh bench     # install + python bench/run.py in full (extra args go to run.py)
#   bash bench/gpu_check.sh data      # install + `siglip2 embed-dataset` images/s (So400m shape, 256 patches, bf16)
#   bash bench/gpu_check.sh all       # all three, if the budget allows
# The GPU machine has torch, triton, transformers and pytest but no internet: the siglip-kernel baseline wheel must
# travel with the call. bench/wheels/ is git-ignored: fill it on the dev machine with
#   pip download --no-deps -d bench/wheels siglip-kernel==0.1.2
# and name bench/wheels in the device run's `carry`. Outputs (logs, results.json/.md) are copied to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
shift || true
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
ls bench/wheels/*.whl >/dev/null 2>&1 && pip install -q --no-deps bench/wheels/*.whl
pip install -q -e . --no-deps --no-build-isolation
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
if [ "$stage" = tests ] || [ "$stage" = all ]; then
  python -m pytest -q -m gpu --durations=15 2>&1 | tail -60 | tee "$OUT/pytest-gpu.txt"
  python -m pytest -q tests/test_modeling.py tests/test_validation.py 2>&1 | tail -15 | tee "$OUT/pytest-model.txt"
fi
if [ "$stage" = data ] || [ "$stage" = all ]; then
  python bench/bench_data.py gpu --num-images 4096 2>&1 | tee "$OUT/bench-data.txt"
fi
if [ "$stage" = bench ] || [ "$stage" = all ]; then
  python bench/run.py "$@" 2>&1 | tee "$OUT/bench.txt"
  latest=$(ls -td bench/results/*/ | head -1)
  cp "$latest"/results.json "$latest"/results.md "$OUT"/ 2>/dev/null
  echo "results in $latest (commit it as bench/results/<gpu>-<date>/)"
fi
