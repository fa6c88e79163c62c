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


def setup_distributed(device_arg):
    """(rank, world size, device): a process group under torchrun (nccl on CUDA, else gloo), one GPU per rank."""
    import torch
    import torch.distributed as dist

    if "RANK" in os.environ and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device_arg != "cpu" else "gloo"
        dist.init_process_group(backend)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if device_arg:
        device = torch.device(device_arg)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
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
    if cfg.steps is None and cfg.epochs is None:
        raise ValueError("--steps / --epochs: give one (how long to train)")
    for name in ("steps", "log_every", "workers", "warmup", "save_every"):
        v = getattr(cfg, name)
        if v is not None and (v < 0 or (name in ("steps", "log_every") and v == 0)):
            kind = "positive" if name in ("steps", "log_every") else "non-negative"
            raise ValueError(f"--{name.replace('_', '-')}: expected a {kind} integer, got {v}")
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
        total = plan.steps_for(int(cfg.epochs * len(source)))
    else:
        raise ValueError("--epochs: webdataset shards have no known length; give --steps")
    resume_dir = C.latest_checkpoint(cfg.out) if cfg.resume else None
    if cfg.resume and resume_dir is None and rank == 0:
        print(f"siglip2 train: --resume: no checkpoint in {cfg.out} yet, starting from step 0", file=sys.stderr)
    model, tok, ip, proc_files = _build(cfg, device)
    if resume_dir:  # exact fp32 weights of the checkpoint
        from ..fast import Siglip2Model

        model = Siglip2Model.from_pretrained(os.path.join(resume_dir, "model"), device=device)
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
    return _loop(
        cfg,
        model,
        module,
        optimizer,
        scheduler,
        loader,
        plan,
        step,
        total,
        rank,
        world,
        device,
        proc_files,
        log_path,
        image_cache,
    )


def _loop(
    cfg,
    model,
    module,
    optimizer,
    scheduler,
    loader,
    plan,
    step,
    total,
    rank,
    world,
    device,
    proc_files,
    log_path,
    image_cache=None,
):
    import torch
    from torch.distributed.tensor import DTensor

    from siglip2.kernels import sigmoid_loss
    from siglip2.kernels.loss import DistributedSigmoidLoss

    from . import checkpointing as C

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
    for batch in loader:
        assert batch["step"] == step, (batch["step"], step)
        skipped += len(batch["skipped"])
        keys = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask", "spatial_shapes")
        inputs = [batch[k].to(device, non_blocking=True) if k in batch else None for k in keys]
        with autocast:
            img, txt, scale, bias = module(*inputs, cache_keys=batch["cache_keys"] if image_cache is not None else None)
        if dist_loss is not None:
            loss = dist_loss(img, txt, scale, bias)
            (loss * world).backward()  # DDP / FSDP average gradients; the ring's per-rank shares sum to the total
        else:
            loss = sigmoid_loss(img, txt, scale, bias, impl=cfg.kernel_impl)
            loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        if isinstance(gn, DTensor):  # FSDP2: the norm of sharded gradients is a DTensor
            gn = gn.full_tensor()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step, cursor, consumed = step + 1, batch["cursor"], batch.get("consumed", 0)
        last = float(loss.detach())
        acc += torch.tensor([img.shape[0], float(batch["pixel_attention_mask"].sum()), 0.0], dtype=torch.float64)
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
                "grad_norm": float(gn),
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
                with open(log_path, "a") as f:
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
            C.save_checkpoint(cfg.out, step, module, model, optimizer, scheduler, extra, proc_files, cfg.keep_last)
        if stop:
            break
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    return {"steps": step, "final_loss": last, "checkpoint": C.latest_checkpoint(cfg.out)}
