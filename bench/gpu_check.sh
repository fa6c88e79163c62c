#!/usr/bin/env bash
# The GPU check: one command for a short GPU window (device tool, from the repo root; under 8 min on one H100).
# Under ROCm PyTorch (AMD Instinct / Radeon) the same command runs: torch.cuda drives the AMD GPU, the kernels take
# their gfx family's configs (kernels/_configs.py), rocm-smi stands in for nvidia-smi.
#   bash bench/gpu_check.sh                # tests, kernels, peers, model: in that order
#   bash bench/gpu_check.sh --dry-run      # the same steps on CPU at tiny sizes, kernels through Triton's
#                                          # interpreter (CI runs it, so the script cannot rot without a GPU)
#   bash bench/gpu_check.sh kernels model  # chosen steps only; also `data` (embed-dataset images/s, So400m shape)
#                                          # and `train` (So400m/16 steps, ring-loss memory), not in the default
# Steps:
#   tests    the GPU test tier (pytest -m gpu) and the model tests on CUDA
#   kernels  bench/run.py --ops attention patch_embed loss (the anchor sizes; each op's docstring names them)
#   peers    which alternatives this machine has (SDPA, FlexAttention, flash-attn, siglip-kernel, transformers),
#            each with the reason when missing: peers.json; the kernel and model benches time the ones present
#   model    bench/run.py --ops model preprocess (whole towers: ours, reference, transformers +/- our kernels)
# Everything goes to bench/results/gpu-check-<date>-<time>-<commit>/ (dry run: $TMPDIR/siglip2-gpu-check-dry-run
# unless RESULTS_DIR is set), and is copied to $OUT when the device tool sets it. The exit status is non-zero when
# any step failed; a summary says which.
# The GPU machine has no internet: the siglip-kernel baseline wheel must travel with the call. bench/wheels/ is
# git-ignored: fill it on the dev machine with `pip download --no-deps -d bench/wheels siglip-kernel==0.1.2` and
# name bench/wheels in the device run's `carry`.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then
  dry=1
  shift
fi
steps=${*:-tests kernels peers model}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
stamp=$(date +%Y-%m-%d-%H%M%S)
if [ $dry = 1 ]; then
  RUN=${RESULTS_DIR:-${TMPDIR:-/tmp}/siglip2-gpu-check-dry-run/$stamp-$commit}
  export TRITON_INTERPRET=1 # CPU: the Triton kernels run through the interpreter
  DRY=--dry-run
  echo "gpu_check --dry-run: steps [$steps] on CPU at tiny sizes; expected ~3 min on 2 cores"
else
  RUN=${RESULTS_DIR:-bench/results/gpu-check-$stamp-$commit}
  DRY=
  # an estimate from the steps' sizes, not yet a measurement: no GPU has run this script yet
  echo "gpu_check: steps [$steps]; expected ~7 min on one H100 (tests ~2, kernels ~3, peers <1, model ~1.5)"
fi
mkdir -p "$RUN"
echo "results: $RUN"
failed=()
step() { # step NAME CMD...: run, log to $RUN/NAME.txt, remember a failure
  local name=$1
  shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$RUN/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$RUN/steps.txt"
  [ "$rc" = 0 ] || failed+=("$name (exit $rc)")
}

if [ $dry = 0 ]; then
  # NVIDIA or AMD (ROCm PyTorch drives AMD GPUs through torch.cuda too; the kernels pick their gfx family)
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$RUN/gpu.txt"
  elif command -v rocm-smi >/dev/null; then
    rocm-smi --showproductname --showdriverversion --showmeminfo vram | tee "$RUN/gpu.txt"
  fi
  ls bench/wheels/*.whl >/dev/null 2>&1 && pip install -q --no-deps bench/wheels/*.whl
  pip install -q -e . --no-deps --no-build-isolation
fi
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
  'hip ' + torch.version.hip if torch.version.hip else 'cuda ' + str(torch.version.cuda),
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU',
  getattr(torch.cuda.get_device_properties(0), 'gcnArchName', '') if torch.cuda.is_available() else '')" |
  tee "$RUN/versions.txt"

for s in $steps; do
  case $s in
    tests)
      if [ $dry = 1 ]; then # on CPU the gpu tier skips by design, and CI has just run the rest: check they collect
        step tests-gpu python -m pytest -q -p no:cacheprovider -m gpu --collect-only
        step tests-model python -m pytest -q -p no:cacheprovider tests/test_modeling.py tests/test_validation.py \
          --collect-only
      else
        step tests-gpu python -m pytest -q -p no:cacheprovider -m gpu --durations=15
        step tests-model python -m pytest -q -p no:cacheprovider tests/test_modeling.py tests/test_validation.py
      fi
      ;;
    kernels) step kernels python bench/run.py --ops attention patch_embed loss --no-plots --out "$RUN/kernels" $DRY ;;
    peers)
      step peers python - "$RUN/peers.json" <<'EOF'
import importlib, json, sys
import torch

cuda = torch.cuda.is_available()
peers = {}
def probe(name, check):
    try:
        peers[name] = {"available": True, "version": check()}
    except Exception as e:  # a missing peer is a row with its reason, never a failure of the step
        peers[name] = {"available": False, "reason": f"{type(e).__name__}: {e}"[:200]}
probe("sdpa", lambda: torch.__version__)
def flex():
    importlib.import_module("torch.nn.attention.flex_attention")
    if not cuda:
        raise RuntimeError("FlexAttention is benchmarked on CUDA only")
    return torch.__version__
probe("flex_attention", flex)
probe("flash_attn", lambda: importlib.import_module("flash_attn").__version__)
probe("siglip_kernel", lambda: getattr(importlib.import_module("siglip_kernel"), "__version__", "?"))
probe("transformers", lambda: importlib.import_module("transformers").__version__)
for k, v in peers.items():
    print(f"{k:15s} {v.get('version') if v['available'] else 'missing: ' + v['reason']}")
json.dump(peers, open(sys.argv[1], "w"), indent=1)
EOF
      ;;
    model) step model python bench/run.py --ops model preprocess --no-plots --out "$RUN/model" $DRY ;;
    data) step data python bench/bench_data.py gpu --num-images 4096 ;;
    train)
      # One rank per GPU. A global batch runs when its per-rank share fits TRAIN_MAX_LOCAL (default 1024 images: ~30
      # GB of activations by the --dry-run estimate + ~18 GB of fp32 weights, gradients and AdamW state); the others
      # print how many GPUs they need.
      ngpu=$(python -c "import torch; print(torch.cuda.device_count())")
      max_local=${TRAIN_MAX_LOCAL:-1024}
      tr="python -m torch.distributed.run --nproc-per-node $ngpu --rdzv-backend c10d --rdzv-endpoint localhost:0"
      so400m="--size so400m --synthetic --precision bf16 --grad-checkpointing --steps 5 --warmup-steps 2"
      for gb in 4096 16384 32768; do
        if [ $((gb / ngpu)) -le "$max_local" ]; then
          step "train-gb$gb" timeout 300 $tr bench/bench_train.py step $so400m --global-batch $gb
        else
          echo "global batch $gb: $((gb / ngpu)) per rank on $ngpu GPU(s) > $max_local; needs $((gb / max_local)) GPUs"
        fi
      done
      step train-ring timeout 200 $tr bench/bench_train.py ring --local-batch 4096 --dim 1152 --precision bf16
      step train-lit timeout 150 python bench/bench_lit_cache.py --model base --kernel-impl triton --images 1024 \
        --batch-size 128 --seq-len 256 --rep 1
      ;;
    *)
      echo "unknown step $s (tests, kernels, peers, model, data, train)" >&2
      failed+=("$s (unknown)")
      ;;
  esac
done

[ -n "${OUT:-}" ] && mkdir -p "$OUT" && cp -r "$RUN"/. "$OUT"/
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: FAILED steps: ${failed[*]} (logs in $RUN)" >&2
  exit 1
fi
echo "gpu_check: all steps passed (results in $RUN)"
