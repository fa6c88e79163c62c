"""The training run of `siglip2 train`: `train(TrainConfig(...))` (the command line's options, as fields) sets up
the process group, builds or loads the model, tokenizer and image processor, plans the batches, and runs the loop:
the global-batch SigLIP loss (`DistributedSigmoidLoss` across ranks, the fused `sigmoid_loss` in one process),
clipping, AdamW with a warm-up + cosine schedule, logging (log.jsonl, optionally TensorBoard) and crash-safe
checkpoints (checkpointing.py). cli.py is the command line.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """The options of `siglip2 train`, one field per flag (cli.py maps the parsed flags onto them)."""

    data: str
    model: str
    out: str
    tokenizer: str | None = None  # random-init sizes: a directory with tokenizer.json (default: none -> error)
    steps: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    tokens_per_batch: int | None = None
    seq_lens: tuple = (256,)
    mixed_budgets: bool = False
    count_text_tokens: bool = False
    lr: float = 1e-4
    min_lr_ratio: float = 0.0
    warmup: int = 0
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    grad_checkpointing: bool = False
    fsdp: bool = False
    lock_image: bool = False
    cache_image_embeddings: bool = False
    compile: bool = False
    kernel_impl: str = "auto"
    resume: bool = False
    stop_after: int | None = None  # end this invocation after this step (checkpointed), as a preemption would
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    keep_last: int = 2
    workers: int = 2
    seed: int = 0
    device: str | None = None
    report_to: tuple = field(default_factory=tuple)
    dry_run: bool = False
    progress: bool = True


# The arguments a resumed run must share with the run that wrote its checkpoint (they decide the batches, the
# schedule or the model); the others (--stop-after, --log-every, --save-every, --keep-last, --workers, --device,
# --report-to, --kernel-impl, --compile, --grad-checkpointing, --cache-image-embeddings) may change.
RESUME_FIXED = (
    "data",
    "model",
    "tokenizer",
    "steps",
    "epochs",
    "batch_size",
    "tokens_per_batch",
    "seq_lens",
    "mixed_budgets",
    "count_text_tokens",
    "lr",
    "min_lr_ratio",
    "warmup",
    "weight_decay",
    "betas",
    "max_grad_norm",
    "precision",
    "fsdp",
    "lock_image",
    "seed",
)


class TrainingDiverged(ValueError):
    """The loss or the gradient norm became non-finite: the run stopped before saving anything from that step."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says the step reached and how to resume."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_config(cfg: TrainConfig) -> None:
    """Refuse values that would train nothing, diverge or silently mean something else, before any work."""
    from ..pipeline import MAX_NUM_PATCHES

    if cfg.steps is None and cfg.epochs is None:
        raise ValueError("--steps / --epochs: give one (how long to train)")
    positives = ("steps", "log_every", "stop_after", "batch_size", "tokens_per_batch")
    for name in (*positives, "workers", "warmup", "save_every", "keep_last"):
        v = getattr(cfg, name)
        positive = name in positives
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (1 if positive else 0)):
            kind = "positive" if positive else "non-negative"
            raise ValueError(f"{_flag(name)}: expected a {kind} integer, got {v!r}")
    ep = cfg.epochs
    if ep is not None and not (isinstance(ep, (int, float)) and math.isfinite(ep) and ep > 0):
        raise ValueError(f"--epochs: expected a positive finite number, got {cfg.epochs!r}")
    for name, lo, hi in (("lr", 0.0, None), ("weight_decay", 0.0, None), ("min_lr_ratio", 0.0, 1.0)):
        v = getattr(cfg, name)
        ok = isinstance(v, (int, float)) and math.isfinite(v) and v >= lo and (hi is None or v <= hi)
        if not ok or (name == "lr" and v == 0):
            want = "in [0, 1]" if hi is not None else "a positive finite number" if name == "lr" else ">= 0, finite"
            raise ValueError(f"{_flag(name)}: expected {want}, got {v!r}")
    g = cfg.max_grad_norm
    if not (isinstance(g, (int, float)) and math.isfinite(g) and g >= 0):  # 0 is "off", a documented choice
        raise ValueError(
            f"--max-grad-norm: expected a finite number >= 0 (0 turns clipping off), got {cfg.max_grad_norm!r}"
        )
    if not cfg.seq_lens or any(
        isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_NUM_PATCHES for m in cfg.seq_lens
    ):
        raise ValueError(
            f"--seq-lens: expected patch budgets in 1..{MAX_NUM_PATCHES} (memory grows with their square), "
            f"got {','.join(map(str, cfg.seq_lens)) if isinstance(cfg.seq_lens, (tuple, list)) else cfg.seq_lens!r}"
        )
    b = cfg.betas
    if not (
        isinstance(b, (tuple, list))
        and len(b) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in b)
    ):  # AdamW's moment decays: 1 never forgets (and divides by 0 in the bias correction), < 0 is meaningless
        raise ValueError(f"--betas: expected two numbers in [0, 1), got {b!r}")
    if cfg.precision not in ("fp32", "bf16"):  # anything else would silently train in fp32
        raise ValueError(f"--precision: expected fp32 or bf16, got {cfg.precision!r}")
    if cfg.kernel_impl not in ("auto", "triton", "reference"):  # else a real run fails late, inside the kernel
        raise ValueError(f"--kernel-impl: expected auto, triton or reference, got {cfg.kernel_impl!r}")
    bad = [r for r in cfg.report_to if r not in REPORT_TO]
    if bad:
        raise ValueError(f"--report-to: expected {' or '.join(REPORT_TO)}, got {bad[0]!r}")
    if "tensorboard" in cfg.report_to and not cfg.dry_run:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as e:
            raise ValueError(
                f"--report-to tensorboard: tensorboard is not installed ({e}); pip install tensorboard, "
                "or leave --report-to out"
            ) from None


REPORT_TO = ("tensorboard",)


def setup_distributed(device_arg):
    """(rank, world size, device): a process group under torchrun (nccl on CUDA, else gloo), one GPU per rank."""
    import torch
    import torch.distributed as dist

    if "RANK" in os.environ and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device_arg != "cpu" else "gloo"
        dist.init_process_group(backend)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    from ..pipeline import resolve_device

    device = resolve_device(device_arg)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per torchrun process
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def _build(cfg, device):
    """(model, tokenizer, image processor, what to save next to every saved model: file paths to copy, or
    processors to save_pretrained) for cfg.model."""
    import torch

    from ..fast import Siglip2Model
    from ..processing.image_processing import Siglip2ImageProcessor, image_processor_from_pretrained
    from ..processing.tokenization import Siglip2Tokenizer
    from .model import SIZES, size_config

    if cfg.model in SIZES and not os.path.isdir(cfg.model):
        if not cfg.tokenizer:
            raise ValueError(f"--tokenizer: a random-init size ({cfg.model}) needs a directory with tokenizer.json")
        tok = Siglip2Tokenizer.from_pretrained(cfg.tokenizer, model_type="siglip2")
        mcfg = size_config(cfg.model, len(tok))
        torch.manual_seed(cfg.seed)
        with torch.device("meta") if cfg.dry_run else device:
            model = Siglip2Model(mcfg)
        with torch.no_grad():  # the SigLIP paper's init (t' = log 10, b = -10): transformers' zeros train slowly
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-10.0)
        P = mcfg.vision_config.patch_size
        ip = Siglip2ImageProcessor(patch_size=P, max_num_patches=max(cfg.seq_lens))
        files = [
            os.path.join(cfg.tokenizer, f)
            for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
        ]
        return model, tok, ip, [f for f in files if os.path.exists(f)] + [ip]  # ip: written as preprocessor_config
    from ..checkpoints.loading import resolve_dir

    d = resolve_dir(cfg.model)
    if cfg.dry_run:  # the plan needs shapes only
        from ..models.configuration import Siglip2Config

        with torch.device("meta"):
            model = Siglip2Model(Siglip2Config.from_pretrained(d))
    else:
        model = Siglip2Model.from_pretrained(d, device=device)
    tok = Siglip2Tokenizer.from_pretrained(cfg.tokenizer or d)
    ip = image_processor_from_pretrained(d)
    if not isinstance(ip, Siglip2ImageProcessor):
        raise ValueError(f"--model: {d} is a FixRes (SigLIP) checkpoint; training supports NaFlex (Siglip2Model)")
    files = [
        os.path.join(cfg.tokenizer or d, f)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    ]
    files.append(os.path.join(d, "preprocessor_config.json"))
    return model, tok, ip, [f for f in files if os.path.exists(f)]


def train(cfg: TrainConfig) -> dict:
    """Run (or, with dry_run, plan) a training job; returns a summary dict (steps, final loss, checkpoint)."""
    import torch

    from ..data import FileSource, open_source
    from . import checkpointing as C
    from . import model as U
    from .data import TEXT_TOKENS, BatchPlan, CaptionedSamples, Collate, PlanSampler, WebDatasetBatches

    if cfg.batch_size is None and cfg.tokens_per_batch is None:
        cfg.batch_size = 32
    check_config(cfg)
    if cfg.cache_image_embeddings and (not cfg.lock_image or cfg.fsdp):
        raise ValueError(
            "--cache-image-embeddings: needs --lock-image (a frozen vision tower) and DDP or one process, not "
            f"--fsdp (FSDP2 gathers the tower's shards collectively); got lock_image={cfg.lock_image}, fsdp={cfg.fsdp}"
        )
    source = open_source(cfg.data)
    if isinstance(source, FileSource) and not source.has_captions:
        raise ValueError(f"--data: {cfg.data!r} has no captions (a caption or text column is needed to train)")
    rank, world, device = setup_distributed(None if cfg.dry_run else cfg.device)
    if cfg.count_text_tokens and cfg.tokens_per_batch is None:
        raise ValueError("--count-text-tokens: needs --tokens-per-batch (the budget the text tokens count against)")
    plan = BatchPlan(
        tuple(cfg.seq_lens),
        world,
        cfg.batch_size,
        cfg.tokens_per_batch,
        cfg.mixed_budgets,
        cfg.seed,
        TEXT_TOKENS if cfg.count_text_tokens else 0,
    )
    if cfg.steps is not None:
        total = cfg.steps
    elif cfg.epochs is None:
        raise ValueError("--steps / --epochs: give one of them (how long to train), got neither")
    elif isinstance(source, FileSource):
        samples = int(cfg.epochs * len(source))
        if samples // _max_global_batch(plan) > MAX_STEPS:  # steps_for walks the plan step by step: it would hang
            raise ValueError(
                f"--epochs: {cfg.epochs} of {len(source)} rows is more than {MAX_STEPS:.0e} steps; "
                "give fewer --epochs (or --steps)"
            )
        total = plan.steps_for(samples)
        if total < 1:
            raise ValueError(
                f"--epochs: {cfg.epochs} of {len(source)} rows is {int(cfg.epochs * len(source))} samples, "
                "not one step; give more --epochs or --steps"
            )
    else:
        raise ValueError("--epochs: webdataset shards have no known length; give --steps")
    run_args = _run_args(cfg)
    resume_dir = None
    if cfg.resume:
        resume_dir = C.latest_checkpoint(cfg.out)
        if resume_dir is None and rank == 0:
            print(f"siglip2 train: --resume: no checkpoint in {cfg.out} yet, starting from step 0", file=sys.stderr)
        elif resume_dir is not None:
            if not os.path.exists(os.path.join(cfg.out, "latest")) and rank == 0:
                print(
                    f"siglip2 train: --resume: {cfg.out}/latest is missing (a crash while saving); resuming from "
                    f"{os.path.basename(resume_dir)}, the newest complete checkpoint",
                    file=sys.stderr,
                )
            C.check_checkpoint(resume_dir)
            _check_same_run(C.read_run_args(resume_dir), run_args, resume_dir)
    elif not cfg.dry_run:
        _check_fresh_out(cfg.out)
    if isinstance(source, FileSource):  # after the resume checks: a changed --data is named as such
        _check_batch_fits(cfg, plan, len(source))
    model, tok, ip, proc_files = _build(cfg, device)
    if resume_dir:  # exact fp32 weights of the checkpoint
        from ..fast import Siglip2Model

        try:
            model = Siglip2Model.from_pretrained(os.path.join(resume_dir, "model"), device=device)
        except (OSError, ValueError, RuntimeError, KeyError) as e:  # CheckpointError would blame --model
            raise ValueError(
                f"--resume: {os.path.join(resume_dir, 'model')}: cannot load the checkpoint's weights ({e})"
            ) from None
    if not cfg.dry_run:
        with torch.no_grad():  # own storage: tensors loaded from safetensors alias the file at arbitrary offsets,
            # where CPU kernels take other vectorized paths and round differently (resume would not be bit-exact)
            for t in [*model.parameters(), *model.buffers()]:
                t.data = t.data.clone()
    model.set_impl("triton", cfg.kernel_impl)
    if cfg.dry_run:
        return U.dry_run(cfg, model, plan, world, total)

    image_cache = U.ImageEmbeddingCache() if cfg.cache_image_embeddings else None
    module = U.ContrastiveForward(model, cfg.lock_image, image_cache)
    if cfg.grad_checkpointing:
        U.apply_activation_checkpointing(model)
    if cfg.compile:
        for layer in U.encoder_layers(model):
            layer.compile()
    module = U.wrap(module, fsdp=cfg.fsdp, precision=cfg.precision, device=device)
    optimizer = torch.optim.AdamW(U.param_groups(module, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: U.lr_lambda(s, cfg.warmup, total, cfg.min_lr_ratio)
    )
    step, cursor, consumed = 0, 0, 0
    if resume_dir:
        extra = C.load_training_state(resume_dir, module, optimizer, scheduler)
        step, cursor, consumed = extra["step"], extra["cursor"], extra.get("consumed", 0)
        if extra.get("world_size") != world:
            raise ValueError(
                f"--resume: the checkpoint was written by {extra.get('world_size')} ranks, this run "
                f"has {world}; exact resume needs the same number"
            )
        if cfg.stop_after is not None and cfg.stop_after <= step < total:  # it would never stop
            raise ValueError(
                f"--stop-after: {cfg.stop_after}, but {resume_dir} is already at step {step}; give a later step"
            )
    os.makedirs(cfg.out, exist_ok=True)
    log_path = os.path.join(cfg.out, "log.jsonl")
    if rank == 0:
        if resume_dir:
            C.trim_log(log_path, step)
        elif os.path.exists(log_path):
            os.remove(log_path)

    P = model.config.vision_config.patch_size
    collate = Collate(ip, tok)
    if isinstance(source, FileSource):
        sampler = PlanSampler(plan, len(source), rank, step, cursor, total)
        loader = torch.utils.data.DataLoader(
            CaptionedSamples(source, P),
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if cfg.workers else None,
        )
    else:  # one worker keeps the stream order (and so the resume position) exact
        loader = torch.utils.data.DataLoader(
            WebDatasetBatches(source, plan, rank, step, cursor, total, consumed, P, collate),
            batch_size=None,
            num_workers=min(cfg.workers, 1),
        )
    try:
        run = _Run(
            model, module, optimizer, scheduler, loader, total, rank, world, device, proc_files, log_path, image_cache
        )
        return _loop(cfg, run, step)
    except KeyboardInterrupt as e:
        if isinstance(e, TrainingInterrupted):
            raise
        raise TrainingInterrupted(_interrupted_message(cfg, None)) from None


@dataclass
class _Run:
    """What the loop runs on, built once by `train`: the model (and its wrapped training module), the optimizer and
    schedule, the batches, the length of the run, where this rank stands, and where it writes."""

    model: Any
    module: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    total: int
    rank: int
    world: int
    device: Any
    proc_files: Any
    log_path: str
    image_cache: Any = None  # --cache-image-embeddings


def _step(cfg, run: _Run, batch, params, autocast, dist_loss, step):
    """One optimizer step; (step, cursor, consumed, loss, grad norm) after it. Raises TrainingDiverged on a
    non-finite loss or gradient norm: the weights are then not saved, so the last checkpoint stays the good one."""
    import torch
    from torch.distributed.tensor import DTensor

    from siglip2.kernels import sigmoid_loss

    assert batch["step"] == step, (batch["step"], step)
    keys = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask", "spatial_shapes")
    inputs = [batch[k].to(run.device, non_blocking=True) if k in batch else None for k in keys]
    with autocast:
        cache_keys = batch["cache_keys"] if run.image_cache is not None else None
        img, txt, scale, bias = run.module(*inputs, cache_keys=cache_keys)
    if dist_loss is not None:
        loss = dist_loss(img, txt, scale, bias)
        (loss * run.world).backward()  # DDP / FSDP average gradients; the ring's per-rank shares sum to the total
    else:
        loss = sigmoid_loss(img, txt, scale, bias, impl=cfg.kernel_impl)
        loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
    if isinstance(gn, DTensor):  # FSDP2: the norm of sharded gradients is a DTensor
        gn = gn.full_tensor()
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    # The loop already synchronized once per step to read the loss (progress bar, log); reading the grad norm in the
    # same transfer makes the finiteness check free. The grad norm is the same on every rank (gradients are
    # all-reduced), so every rank stops at the same step; a checkpoint is only written after this check passes.
    loss_v, gn_v = torch.stack([loss.detach().float().reshape(()), gn.detach().float().reshape(())]).tolist()
    if not (math.isfinite(loss_v) and math.isfinite(gn_v)):
        raise TrainingDiverged(
            f"step {step + 1}: the loss is {loss_v} and the gradient norm {gn_v}: training diverged (try a lower "
            f"--lr than {cfg.lr}, or --warmup); nothing from this step was saved, the checkpoints in "
            f"{cfg.out} are intact"
        )
    return step + 1, batch["cursor"], batch.get("consumed", 0), loss_v, gn_v


def _run_args(cfg) -> dict:
    """The RESUME_FIXED arguments as JSON data (paths made absolute, so a resume from another directory matches)."""
    out = {}
    for k in RESUME_FIXED:
        v = getattr(cfg, k)
        if k in ("data", "model", "tokenizer") and isinstance(v, str) and os.path.exists(v):
            v = os.path.abspath(v)
        out[k] = list(v) if isinstance(v, tuple) else v
    return {"train_args": out}


def _check_same_run(saved, now, resume_dir) -> None:
    if saved is None:  # a checkpoint from before train_args.json was written: nothing to compare
        return
    old, new = saved.get("train_args", {}), now["train_args"]
    diff = [f"{_flag(k)} {old.get(k)!r} -> {new.get(k)!r}" for k in RESUME_FIXED if k in old and old[k] != new[k]]
    if diff:
        raise ValueError(
            f"--resume: {resume_dir} was trained with other arguments ({'; '.join(diff)}); resume with the "
            "original ones (only --stop-after, --log-every, --save-every, --keep-last, --workers, --device, "
            "--report-to, --kernel-impl, --compile, --grad-checkpointing may change), or give a new --out"
        )


def _check_fresh_out(out) -> None:
    """A run without --resume must not replace another run's log and checkpoints."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out: {out!r} is a file; give a directory")
    if not os.path.isdir(out):
        return
    used = sorted(
        n for n in os.listdir(out) if n in ("latest", "log.jsonl") or n.startswith(("checkpoint-", ".tmp-checkpoint-"))
    )
    if used:
        raise ValueError(
            f"--out {out!r} holds a training run (found {used[0]!r}); add --resume to continue it, or give a new --out"
        )


MAX_STEPS = 10**7  # --epochs' bound: far past any real run (SigLIP 2: ~1.2M steps), and planned in seconds


def _max_global_batch(plan) -> int:
    """The most samples one step can draw (with a token budget: every one at the smallest budget)."""
    if plan.batch_size is not None:
        return plan.world_size * plan.batch_size
    return plan.world_size * (int(plan.tokens_per_batch or 0) // (min(plan.seq_lens) + plan.text_tokens))


def _check_batch_fits(cfg, plan, n: int) -> None:
    """A step's global batch must hold distinct pairs: a pair drawn twice counts its own copy as a negative."""
    if n < 2:
        raise ValueError(
            f"--data: {cfg.data!r} has {n} row(s); contrastive training needs at least 2 pairs "
            "(each pair's negatives are the other pairs in its batch)"
        )
    g = _max_global_batch(plan)
    if plan.batch_size is not None:
        what = f"--batch-size {plan.batch_size}"
    else:
        what = f"--tokens-per-batch {plan.tokens_per_batch} (up to {g // plan.world_size} samples per rank)"
    if g > n:
        ranks = f" x {plan.world_size} ranks" if plan.world_size > 1 else ""
        raise ValueError(
            f"{what}{ranks}: a global batch of {g} pairs is larger than --data {cfg.data!r} ({n} rows), so a batch "
            "would repeat pairs and count a pair's own copy as its negative; use a smaller batch or more data"
        )


def _interrupted_message(cfg, step) -> str:
    from . import checkpointing as C

    try:
        last = C.latest_checkpoint(cfg.out)
    except (OSError, ValueError):
        last = None
    where = f"at step {step}" if step is not None else "before the first step"
    if last is None:
        return f"interrupted {where}; no checkpoint was saved yet, so rerun from the start (with a new --out)"
    return f"interrupted {where}; the last checkpoint is {last}: resume with the same command plus --resume"


def _worker_error(e: Exception) -> Exception:
    """A DataLoader worker's exception comes back with the worker's whole traceback as its message; keep the
    original message (its last line), so the command line prints one readable line."""
    msg = str(e)
    if "Original Traceback" not in msg:
        return e
    last = next((line for line in reversed(msg.splitlines()) if line.strip()), msg)
    prefix = type(e).__name__ + ": "
    text = last.split(prefix, 1)[1] if prefix in last else last.strip()
    cls = type(e) if isinstance(e, (OSError, ValueError, TypeError)) else ValueError
    try:
        return cls(f"in a data loader worker: {text}")
    except Exception:  # an exception class with another signature
        return ValueError(f"in a data loader worker: {type(e).__name__}: {text}")


def _loop(cfg, run: _Run, step: int):
    import torch

    from siglip2.kernels.loss import DistributedSigmoidLoss

    from . import checkpointing as C

    module, scheduler, total, rank, world, device = (
        run.module,
        run.scheduler,
        run.total,
        run.rank,
        run.world,
        run.device,
    )
    image_cache = run.image_cache

    dist_loss = DistributedSigmoidLoss(impl=cfg.kernel_impl) if world > 1 else None
    params = [p for p in module.parameters() if p.requires_grad]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16" and not cfg.fsdp)
    writer = None
    if rank == 0 and "tensorboard" in cfg.report_to:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(cfg.out, "tb"))
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True)
    module.train()
    acc = torch.zeros(3, dtype=torch.float64)  # images, valid image tokens, loss sum (local) since the last log
    t0, last, skipped = time.perf_counter(), None, 0
    cursor = consumed = 0
    run_args = _run_args(cfg)  # saved in every checkpoint: --resume refuses other arguments
    try:
        batches = iter(run.loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as e:
                err = _worker_error(e)
                if err is e:
                    raise
                raise err from None
            step, cursor, consumed, last, gn = _step(cfg, run, batch, params, autocast, dist_loss, step)
            skipped += len(batch["skipped"])
            acc += torch.tensor(
                [batch["input_ids"].shape[0], float(batch["pixel_attention_mask"].sum()), 0.0], dtype=torch.float64
            )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last:.4f}", gbs=batch["global_batch"], L=batch["budget"])
            if step % cfg.log_every == 0 or step == total:
                if world > 1:
                    torch.distributed.all_reduce(acc)
                dt = time.perf_counter() - t0
                rec = {
                    "step": step,
                    "loss": last,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": gn,
                    "global_batch": batch["global_batch"],
                    "max_num_patches": batch["budget"],
                    "images_per_s": acc[0].item() / dt,
                    "tokens_per_s": acc[1].item() / dt,
                    "skipped": skipped,
                }
                if image_cache is not None:
                    rec["image_cache_hits"], rec["image_cache_misses"] = image_cache.hits, image_cache.misses
                if device.type == "cuda":
                    rec["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                if rank == 0:
                    with open(run.log_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    if bar is not None:
                        bar.write(json.dumps(rec))
                    elif cfg.progress:
                        print(json.dumps(rec), flush=True)
                    if writer is not None:
                        for k, v in rec.items():
                            writer.add_scalar(f"train/{k}", v, step)
                acc.zero_()
                t0 = time.perf_counter()
            stop = step == cfg.stop_after
            if step == total or stop or (cfg.save_every and step % cfg.save_every == 0):
                extra = {"step": step, "cursor": cursor, "consumed": consumed, "world_size": world}
                C.save_checkpoint(
                    cfg.out,
                    step,
                    module,
                    run.model,
                    run.optimizer,
                    scheduler,
                    extra,
                    run.proc_files,
                    cfg.keep_last,
                    run_args,
                )
            if stop:
                break
    except KeyboardInterrupt:  # also inside a checkpoint save: those are crash-safe, the previous one stays
        raise TrainingInterrupted(_interrupted_message(cfg, step)) from None
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return {"steps": step, "final_loss": last, "checkpoint": C.latest_checkpoint(cfg.out)}
