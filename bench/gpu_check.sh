#!/usr/bin/env bash
# One GPU session's validation (device tool, from the repo root). Each stage fits one 10-minute device call:
#   bash bench/gpu_check.sh tests     # install + GPU test tier (pytest -m gpu) + model tests on CUDA
#   bash bench/gpu_check.sh bench     # install + python bench/run.py in full (extra args go to run.py)
#   bash bench/gpu_check.sh data      # install + `siglip2 embed-dataset` images/s (So400m shape, 256 patches, bf16)
#   bash bench/gpu_check.sh all       # all three, if the budget allows
#   bash bench/gpu_check.sh train     # install + bench/bench_train.py: So400m/16 step (256 patches, bf16, activation
#                                     # checkpointing) for global batches 4k/16k/32k over the GPUs, ring-loss memory
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
if [ "$stage" = train ]; then
  # One rank per GPU. A global batch runs when its per-rank share fits TRAIN_MAX_LOCAL (default 1024 images: ~30 GB
  # of activations by the --dry-run estimate + ~18 GB of fp32 weights, gradients and AdamW state); the others print
  # how many GPUs they need. The per-rank sweep is what each rank of a larger job does, minus the ring's transfers.
  ngpu=$(nvidia-smi -L | wc -l)
  max_local=${TRAIN_MAX_LOCAL:-1024}
  tr="python -m torch.distributed.run --nproc-per-node $ngpu --rdzv-backend c10d --rdzv-endpoint localhost:0"
  so400m="--size so400m --synthetic --precision bf16 --grad-checkpointing --steps 5 --warmup-steps 2"
  for gb in 4096 16384 32768; do
    if [ $((gb / ngpu)) -le "$max_local" ]; then
      timeout 300 $tr bench/bench_train.py step $so400m --global-batch $gb 2>&1 | tail -3 | tee -a "$OUT/bench-train.txt"
    else
      echo "global batch $gb: $((gb / ngpu)) per rank on $ngpu GPU(s) > $max_local; needs $((gb / max_local)) GPUs" \
        | tee -a "$OUT/bench-train.txt"
    fi
  done
  if [ "$ngpu" -eq 1 ]; then
    for b in 256 512 1024; do
      timeout 200 python bench/bench_train.py step $so400m --batch-size $b 2>&1 | tail -1 | tee -a "$OUT/bench-train.txt"
    done
  fi
  timeout 200 $tr bench/bench_train.py ring --local-batch 4096 --dim 1152 --precision bf16 2>&1 | tail -12 \
    | tee -a "$OUT/bench-train.txt"
  # locked-image tuning, with and without the image-embedding cache (random base model, drawn shapes)
  timeout 150 python bench/bench_lit_cache.py --model base --kernel-impl triton --images 1024 --batch-size 128 \
    --seq-len 256 2>&1 | tail -4 | tee -a "$OUT/bench-train.txt"
fi
