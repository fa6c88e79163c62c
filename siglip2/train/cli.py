"""`siglip2 train`: contrastive (SigLIP) training and fine-tuning of `siglip2.fast.Siglip2Model`.

  siglip2 train --data SOURCE --model ID_OR_DIR_OR_SIZE --out DIR [--steps N | --epochs E] [--batch-size B]
                [--seq-lens 128,256,576,784,1024] [--tokens-per-batch T] [--mixed-budgets] [--lr ...] [--warmup ...]
                [--precision bf16] [--grad-checkpointing] [--fsdp] [--lock-image [--cache-image-embeddings]] [--resume]
                [--log-every K] [--save-every K] [--dry-run]

One process, or every rank of `torchrun --nproc-per-node W -m siglip2 train ...`: DDP by default, FSDP2 with
`--fsdp`. The loss is the global-batch SigLIP loss: `DistributedSigmoidLoss` (a ring, each rank holding only its own
blocks) across ranks, the fused `sigmoid_loss` in one process. `--batch-size` and `--tokens-per-batch` are per rank;
the log shows the global batch. `--warmup` is in steps. Batches follow `siglip2.train.data.BatchPlan`; checkpoints
and resume follow `siglip2.train.checkpointing`. `train(TrainConfig(...))` (loop.py) is the same run from Python.

Refused before any work, one line each: an --out holding a run without --resume, a resume with other arguments
(loop.RESUME_FIXED), a global batch larger than the table (a pair's copy would be its own negative), out-of-range
numbers, a --device this machine lacks. A non-finite loss or gradient norm stops the run naming the step, before
anything from that step is saved; Ctrl-C prints the step reached and the checkpoint to resume from (exit 130).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .loop import REPORT_TO, TrainConfig, TrainingInterrupted, train


def add_arguments(p) -> None:
    a = p.add_argument
    a(
        "--data",
        required=True,
        help="captioned source: CSV/TSV/JSONL table (image + caption columns), or "
        "webdataset .tar shards with .txt captions",
    )
    a(
        "--model",
        required=True,
        help="checkpoint directory or hub id to fine-tune, or a size to train from random "
        "init: tiny, base, large, so400m (then --tokenizer DIR)",
    )
    a("--out", required=True, help="output directory (checkpoints, log.jsonl)")
    a("--tokenizer", default=None, help="directory with tokenizer.json for a random-init size")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--epochs", type=float, default=None)
    a("--batch-size", type=int, default=None, help="per rank (default 32 unless --tokens-per-batch is given)")
    a(
        "--tokens-per-batch",
        type=int,
        default=None,
        help="per-rank patch budget: the batch size of a step is this // its max_num_patches",
    )
    a("--seq-lens", default="256", help="comma-separated max_num_patches buckets, one drawn per step")
    a("--mixed-budgets", action="store_true", help="draw a budget per sample instead of per step (packed batches)")
    a(
        "--count-text-tokens",
        action="store_true",
        help="charge each caption's text tokens (its padded length, 64) against --tokens-per-batch as well",
    )
    a("--lr", type=float, default=1e-4)
    a("--min-lr-ratio", type=float, default=0.0, help="final lr as a fraction of --lr (cosine), in [0, 1]")
    a("--warmup", type=int, default=0, help="linear warm-up steps")
    a("--weight-decay", type=float, default=0.1)
    a("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm >= 0 (0: off; the norm is still logged)")
    a("--precision", choices=["fp32", "bf16"], default="fp32")
    a("--grad-checkpointing", action="store_true", help="recompute each encoder layer in backward")
    a("--fsdp", action="store_true", help="FSDP2 (fully_shard per encoder layer, then the root) instead of DDP")
    a("--lock-image", action="store_true", help="freeze the vision tower (locked-image tuning)")
    a(
        "--cache-image-embeddings",
        action="store_true",
        help="with --lock-image: keep the frozen tower's embedding of every image (per max_num_patches) in CPU "
        "memory and reuse it in later epochs (one process or DDP; not with --fsdp)",
    )
    a("--compile", action="store_true", help="torch.compile each encoder layer")
    a("--kernel-impl", choices=["auto", "triton", "reference"], default="auto")
    a(
        "--resume",
        action="store_true",
        help="continue from OUT/latest (or, if it is missing, the newest OUT/checkpoint-*). The other arguments "
        "must be the first run's; only --stop-after, --log-every, --save-every, --keep-last, --workers, --device, "
        "--report-to, --kernel-impl, --compile and --grad-checkpointing may change. Without --resume, an --out "
        "that holds a run is refused",
    )
    a(
        "--stop-after",
        type=int,
        default=None,
        help="checkpoint and exit after this step (the schedule still spans --steps); continue with --resume",
    )
    a("--log-every", type=int, default=10)
    a("--save-every", type=int, default=0, help="checkpoint every K steps (and always at the end)")
    a("--keep-last", type=int, default=2, help="checkpoints to keep (0: all)")
    a("--workers", type=int, default=2, help="data loader workers per rank")
    a("--seed", type=int, default=0)
    a("--device", default=None)
    a(
        "--report-to",
        default=(),
        type=_report_to,
        help="'tensorboard' to also write TensorBoard events under OUT/tb (needs the tensorboard package)",
    )
    a("--dry-run", action="store_true", help="print the plan (parameters, tokens, activation memory) and exit")


def run(args) -> int:
    cfg = TrainConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    )
    cfg.seq_lens = _parse_lens(args.seq_lens)
    try:
        train(cfg)
    except KeyboardInterrupt as e:
        msg = str(e) if isinstance(e, TrainingInterrupted) else "interrupted before the first step; nothing was trained"
        print(f"siglip2 train: {msg}", file=sys.stderr)
        return 130  # the shell's code for a SIGINT
    return 0


def _report_to(s: str) -> tuple:
    got = tuple(x.strip() for x in s.split(",") if x.strip() and x.strip() != "none")
    bad = [x for x in got if x not in REPORT_TO]
    if bad:
        raise argparse.ArgumentTypeError(f"expected {' or '.join(REPORT_TO)} (or none), got {bad[0]!r}")
    return got


def _parse_lens(s) -> tuple:
    try:
        lens = tuple(int(x) for x in str(s).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--seq-lens: expected comma-separated integers, got {s!r}") from None
    if not lens or min(lens) <= 0:
        raise ValueError(f"--seq-lens: expected positive integers, got {s!r}")
    return lens
