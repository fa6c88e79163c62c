#!/usr/bin/env bash
# One GPU session's validation, sized for a single device run of a few minutes (device tool: run from the repo root):
#   bash bench/gpu_check.sh [--quick]
# 1. installs the project (no deps: the GPU machine has torch, triton, transformers, pytest, but no internet);
#    wheels under bench/wheels/ (e.g. siglip-kernel for the loss baseline) are installed first when present;
# 2. runs the GPU test tier (pytest -m gpu) and the model/kernel tests on CUDA;
# 3. runs python bench/run.py in full and leaves bench/results/<gpu>-<date>/ (copied to $OUT when set).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
# bench/wheels/ is git-ignored: fill it here with `pip download --no-deps -d bench/wheels siglip-kernel==0.1.2`
# and name it in the device run's `carry`.
ls bench/wheels/*.whl >/dev/null 2>&1 && pip install -q --no-deps bench/wheels/*.whl
pip install -q -e . --no-deps --no-build-isolation
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
python -m pytest -q -m gpu -x --durations=15 2>&1 | tail -40 | tee "$OUT/pytest-gpu.txt"
python -m pytest -q tests/test_modeling.py tests/test_validation.py 2>&1 | tail -15 | tee "$OUT/pytest-model-cuda.txt"
python bench/run.py ${1:-} 2>&1 | tee "$OUT/bench.txt"
latest=$(ls -td bench/results/*/ | head -1)
cp "$latest"/results.json "$latest"/results.md "$OUT"/ 2>/dev/null
echo "results in $latest"
