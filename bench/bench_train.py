"""Benchmark: the training step of `siglip2 train` (siglip2/train/loop.py), on CPU or GPU.

  python bench/bench_train.py step        # small model (256 wide, 4 + 4 layers, patch 16), 256 patches, batch 8,
                                          # photo-like JPEGs through the training loader: median ms of data wait,
                                          # forward, loss, backward, optimizer; images/s, tokens/s, peak memory
  python bench/bench_train.py buckets     # the same per-rank patch budget (8 x 256) as a fixed-length run, as
                                          # --seq-lens 64,128,256 buckets, and as mixed budgets (a process each)
  torchrun --nproc-per-node W bench/bench_train.py step --size so400m --synthetic --global-batch 4096 \\
      --precision bf16 --grad-checkpointing   # GPU: So400m/16 at 256 patches, the global batch split over W ranks
  torchrun --nproc-per-node W bench/bench_train.py ring --local-batch 4096
                                          # per-rank peak memory and time of the ring loss (fwd + bwd) for world
                                          # sizes 1, 2, 4 .. W at a fixed local batch, against an all-gather loss

`step` runs what `siglip2 train` runs (ContrastiveForward, DDP / FSDP2 wrap, AdamW groups, the warm-up/cosine
schedule, clipping, the PlanSampler + Collate loader with `--workers` processes) with a device sync between the
phases, so each phase's time is its own (wall `*_ms`, and this process's CPU time `*_cpu_ms`, which a shared
machine's load disturbs less; with one torch thread the two agree on an idle machine; images_per_cpu_s and
tokens_per_cpu_s are this process's work rates, the loader workers' CPU not counted). data = waiting for the
loader + the host-to-device copy; loss includes its backward under the ring (which computes gradients in the
forward) but not in one process; backward includes the recomputation under --grad-checkpointing. The first
`--warmup-steps` steps are not timed. `data serial` is what one batch costs to decode, resize and tokenize in one
process: the work the loader workers hide. Peak memory:
`torch.cuda.max_memory_allocated` on CUDA, the process's peak RSS (`ru_maxrss`, everything the process touched) on
CPU, which is why `buckets` runs every case in a process of its own. tokens/s counts valid image patches and
text_tokens/s the text tower's tokens (64 per image, so a flat patch budget gives small buckets more text);
pad_fraction is the padding of the padded host layout (the packed model does not compute it). `--synthetic` feeds
random full-budget batches (no loader: the GPU step alone). Output: one JSON line per result (with device,
versions, date, load average), then a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
SMALL = {
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "patch_size": 16,
    "num_patches": 256,
}
PHASES = ("data", "forward", "loss", "backward", "optimizer")


def _config(size, vocab):
    from siglip2.models.configuration import Siglip2Config
    from siglip2.train.model import SIZES

    s = dict(SMALL if size == "small" else SIZES[size])
    text = {k: v for k, v in s.items() if k not in ("patch_size", "num_patches")}
    text.update(vocab_size=vocab, max_position_embeddings=64)
    return Siglip2Config(text_config=text, vision_config=s)


def make_data(directory, n=256, seed=0):
    """n photo-like JPEGs (~0.3 MP, aspect ratios 4:3 / 3:4 / 16:9 / 1:1) + train.csv with shape captions."""
    import csv

    import PIL.Image
    from bench_data import synthetic_photo

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    from shapes import CLASSES

    table = os.path.join(directory, "train.csv")
    if os.path.exists(table):
        return table
    os.makedirs(os.path.join(directory, "img"), exist_ok=True)
    rng, rows = np.random.default_rng(seed), []
    for i in range(n):
        h, w = [(480, 640), (640, 480), (360, 640), (512, 512)][i % 4]
        path = f"img/{i:05d}.jpg"
        PIL.Image.fromarray(synthetic_photo(rng, h, w)).save(os.path.join(directory, path), quality=90)
        rows.append({"image": path, "caption": CLASSES[i % len(CLASSES)]})
    with open(table + ".tmp", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["image", "caption"])
        wr.writeheader()
        wr.writerows(rows)
    os.replace(table + ".tmp", table)
    return table


def _tokenizer(directory):
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    from test_tokenization import make_tokenizer_dir

    from siglip2.processing.tokenization import Siglip2Tokenizer

    d = os.path.join(directory, "tok")
    if not os.path.exists(os.path.join(d, "tokenizer.json")):
        make_tokenizer_dir(d, model_type=None)
    return Siglip2Tokenizer.from_pretrained(d, model_type="siglip2")


def _synthetic_batches(n, m, patch, vocab, device, seed=0):
    """One random full-budget batch, made on the device once (no loader, no copy): n images of an (h, w) grid of
    h * w <= m patches, and n texts of 64 ids."""
    g = torch.Generator().manual_seed(seed)
    h = math.isqrt(m)
    w = m // h
    batch = {
        "pixel_values": torch.randn(n, m, 3 * patch * patch, generator=g),
        "pixel_attention_mask": torch.zeros(n, m, dtype=torch.long),
        "spatial_shapes": torch.tensor([[h, w]] * n),
        "input_ids": torch.randint(0, vocab, (n, 64), generator=g),
    }
    batch["pixel_attention_mask"][:, : h * w] = 1
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["budget"] = m
    while True:
        yield batch


def _iqr(name: str, xs: list[float]) -> dict:
    from siglip2.profile.timing import Timing

    t = Timing(xs, "steps")
    return {f"{name}_q1": t.q1, f"{name}_q3": t.q3, f"{name}_noisy": t.noisy}


def bench_step(args) -> dict:
    from siglip2.kernels import sigmoid_loss
    from siglip2.kernels.loss import DistributedSigmoidLoss
    from siglip2.train import model as U
    from siglip2.train.data import BatchPlan, CaptionedSamples, Collate, PlanSampler
    from siglip2.train.loop import setup_distributed

    torch.set_num_threads(args.threads)
    rank, world, device = setup_distributed(args.device)
    seq_lens = tuple(int(x) for x in args.seq_lens.split(","))
    if args.global_batch:
        if args.global_batch % world:
            raise ValueError(f"--global-batch: {args.global_batch} is not a multiple of the world size {world}")
        args.batch_size = args.global_batch // world
    tokens = args.tokens_per_batch or (args.batch_size * max(seq_lens) if len(seq_lens) > 1 or args.mixed else None)
    plan = BatchPlan(seq_lens, world, None if tokens else args.batch_size, tokens, args.mixed, seed=0)
    total = args.warmup_steps + args.steps
    work = args.cache
    tok = None if args.synthetic else _tokenizer(work)
    vocab = args.vocab if args.synthetic else len(tok)
    cfg = _config(args.size, vocab)
    torch.manual_seed(0)
    with torch.device(device):
        from siglip2.fast import Siglip2Model

        model = Siglip2Model(cfg)
    model.set_impl("triton", args.kernel_impl)
    module = U.ContrastiveForward(model)
    if args.grad_checkpointing:
        U.apply_activation_checkpointing(model)
    module = U.wrap(module, fsdp=args.fsdp, precision=args.precision, device=device)
    opt = torch.optim.AdamW(U.param_groups(module, 0.1), lr=1e-4, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: U.lr_lambda(s, 2, total, 0.0))
    P = cfg.vision_config.patch_size
    serial_ms = None
    if args.synthetic:
        batches = _synthetic_batches(args.batch_size, max(seq_lens), P, vocab, device)
    else:
        from siglip2.data import open_source
        from siglip2.processing.image_processing import Siglip2ImageProcessor

        source = open_source(make_data(work, args.num_images))
        collate = Collate(Siglip2ImageProcessor(patch_size=P, max_num_patches=max(seq_lens)), tok)
        ds, sampler = CaptionedSamples(source, P), PlanSampler(plan, len(source), rank, 0, 0, total)
        serial = []
        for i, idx in enumerate(sampler):  # the loader's work for a batch, done here in one process
            if i == 3:
                break
            t = time.perf_counter()
            collate([ds[j] for j in idx])
            serial.append((time.perf_counter() - t) * 1e3)
        serial_ms = statistics.median(serial)
        batches = iter(
            torch.utils.data.DataLoader(
                ds,
                batch_sampler=sampler,
                collate_fn=collate,
                num_workers=args.workers,
                prefetch_factor=4 if args.workers else None,
                pin_memory=device.type == "cuda",
            )
        )
    dist_loss = DistributedSigmoidLoss(impl=args.kernel_impl) if world > 1 else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16" and not args.fsdp)
    params = [p for p in module.parameters() if p.requires_grad]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    keys = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask", "spatial_shapes")
    rows = []
    module.train()
    for step in range(total):
        if step == args.warmup_steps and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        batch = next(batches)
        inputs = [batch[k].to(device, non_blocking=True) if k in batch else None for k in keys]
        sync()
        t1, c1 = time.perf_counter(), time.process_time()
        with autocast:
            img, txt, scale, bias = module(*inputs)
        sync()
        t2, c2 = time.perf_counter(), time.process_time()
        loss = (
            dist_loss(img, txt, scale, bias)
            if dist_loss
            else sigmoid_loss(img, txt, scale, bias, impl=args.kernel_impl)
        )
        sync()
        t3, c3 = time.perf_counter(), time.process_time()
        (loss * world).backward()
        sync()
        t4, c4 = time.perf_counter(), time.process_time()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t5, c5 = time.perf_counter(), time.process_time()
        if step >= args.warmup_steps:
            n, valid = img.shape[0], int(batch["pixel_attention_mask"].sum())
            rows.append(
                dict(
                    zip(PHASES, np.diff([t0, t1, t2, t3, t4, t5]) * 1e3),
                    step=(t5 - t0) * 1e3,
                    cpu=dict(zip(PHASES, np.diff([c0, c1, c2, c3, c4, c5]) * 1e3)),
                    step_cpu=(c5 - c0) * 1e3,
                    images=n,
                    tokens=valid,
                    slots=batch["pixel_attention_mask"].numel(),
                    text_tokens=inputs[0].numel(),
                    budget=batch["budget"],
                )
            )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:  # Linux reports KiB
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    wall, cpu = sum(r["step"] for r in rows) / 1e3, sum(r["step_cpu"] for r in rows) / 1e3
    out = {
        "size": args.size,
        "world_size": world,
        "precision": args.precision,
        "grad_checkpointing": args.grad_checkpointing,
        "fsdp": args.fsdp,
        "seq_lens": args.seq_lens,
        "mixed_budgets": args.mixed,
        "tokens_per_batch": tokens,
        "batch_per_rank": args.batch_size,
        "steps_timed": len(rows),
        "workers": args.workers,
        **{f"{p}_ms": statistics.median(r[p] for r in rows) for p in PHASES},
        "step_ms": statistics.median(r["step"] for r in rows),
        # the spread of the step, wall and CPU: interquartile range over the timed steps (siglip2.profile.timing)
        **_iqr("step_ms", [r["step"] for r in rows]),
        **_iqr("step_cpu_ms", [r["step_cpu"] for r in rows]),
        **{f"{p}_cpu_ms": statistics.median(r["cpu"][p] for r in rows) for p in PHASES},
        "step_cpu_ms": statistics.median(r["step_cpu"] for r in rows),
        "images_per_s": world * sum(r["images"] for r in rows) / wall,
        "tokens_per_s": world * sum(r["tokens"] for r in rows) / wall,
        "text_tokens_per_s": world * sum(r["text_tokens"] for r in rows) / wall,
        "images_per_cpu_s": sum(r["images"] for r in rows) / cpu,
        "tokens_per_cpu_s": sum(r["tokens"] for r in rows) / cpu,
        "pad_fraction": 1 - sum(r["tokens"] for r in rows) / sum(r["slots"] for r in rows),
        "load_avg": os.getloadavg()[0],
        "peak_mem_gb": peak,
        "peak_mem_kind": "cuda max allocated" if device.type == "cuda" else "process RSS",
        "data_serial_ms": serial_ms,
        "step_ms_by_budget": {
            m: statistics.median(r["step"] for r in rows if r["budget"] == m)
            for m in sorted({r["budget"] for r in rows})
        },
        "step_cpu_ms_by_budget": {
            m: statistics.median(r["step_cpu"] for r in rows if r["budget"] == m)
            for m in sorted({r["budget"] for r in rows})
        },
    }
    return out if rank == 0 else None


def bench_buckets(args) -> list[dict]:
    """Fixed length, buckets and mixed budgets at the same per-rank patch budget, each in a fresh process."""
    T = args.batch_size * 256
    cases = [
        ("fixed 256", ["--seq-lens", "256", "--batch-size", str(args.batch_size)]),
        ("buckets 64,128,256", ["--seq-lens", "64,128,256", "--tokens-per-batch", str(T)]),
        ("mixed 64,128,256", ["--seq-lens", "64,128,256", "--tokens-per-batch", str(T), "--mixed"]),
    ]
    common = [
        "--steps",
        str(args.steps),
        "--warmup-steps",
        str(args.warmup_steps),
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--cache",
        args.cache,
        "--size",
        args.size,
        "--num-images",
        str(args.num_images),
    ]
    rows = []
    for name, extra in cases:
        r = subprocess.run(
            [sys.executable, __file__, "step", *common, *extra], capture_output=True, text=True, check=False
        )
        if r.returncode:
            raise SystemExit(f"buckets: case {name!r} failed:\n{r.stderr[-3000:]}")
        rows.append({"case": name, **json.loads(r.stdout.strip().splitlines()[-1])})
    return rows


def bench_ring(args) -> list[dict]:
    """Ring loss vs an all-gather loss (text embeddings gathered with autograd, (n_local x N) logits materialized)
    at a fixed local batch, for world sizes 1, 2, 4 .. W (subgroups of the launched ranks)."""
    import torch.distributed as dist

    from siglip2.train.loop import setup_distributed

    rank, world, device = setup_distributed(args.device)
    if not dist.is_initialized():
        raise SystemExit("ring: run under torchrun (torchrun --nproc-per-node W bench/bench_train.py ring)")
    rows = []
    for w in [w for w in (1, 2, 4, 8, 16, 32, 64) if w <= world]:
        group = dist.new_group(list(range(w)))  # every rank takes part in creating every group
        if rank < w:
            rows += _ring_case(args, w, group, rank, device)
        dist.barrier()
    return rows if rank == 0 else []


def _ring_case(args, w, group, rank, device) -> list[dict]:
    import torch.distributed as dist
    import torch.distributed.nn.functional as dnn
    import torch.nn.functional as F

    from siglip2.kernels.loss import DistributedSigmoidLoss

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator(device=device).manual_seed(rank)
    n, d = args.local_batch, args.dim
    img = F.normalize(torch.randn(n, d, generator=g, device=device), dim=-1).to(dtype).requires_grad_()
    txt = F.normalize(torch.randn(n, d, generator=g, device=device), dim=-1).to(dtype).requires_grad_()
    s = torch.tensor(math.log(10.0), device=device, requires_grad=True)
    b = torch.tensor(-10.0, device=device, requires_grad=True)
    ring = DistributedSigmoidLoss(group=group, impl=args.kernel_impl)

    def ring_step():
        loss = ring(img, txt, s, b)
        loss.backward()
        return loss

    def gather_step():
        every = torch.cat(dnn.all_gather(txt, group=group))  # (N, d)
        logits = (img @ every.t()).float() * s.exp() + b  # (n, N)
        labels = -torch.ones_like(logits)
        r = dist.get_rank(group)
        labels[:, r * n : (r + 1) * n] += 2 * torch.eye(n, device=device)
        loss = F.logsigmoid(labels * logits).sum() / (-n * w)  # this rank's share of the global loss
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total, group=group)
        return total

    rows = []
    for name, fn in (("ring", ring_step), ("all-gather", gather_step)):
        times, peak, base = [], None, 0
        for i in range(args.warmup_steps + args.steps):
            if i == args.warmup_steps and device.type == "cuda":
                sync()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            dist.barrier(group)
            t = time.perf_counter()
            value = float(fn())
            sync()
            times.append((time.perf_counter() - t) * 1e3)
            img.grad = txt.grad = s.grad = b.grad = None
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        rows.append(
            {
                "loss": name,
                "world_size": w,
                "local_batch": n,
                "global_batch": n * w,
                "dim": d,
                "dtype": str(dtype).replace("torch.", ""),
                "loss_value": value,
                "ms": statistics.median(times[args.warmup_steps :]),
                "peak_mem_mb": peak,
            }
        )
    return rows


def _table(rows):
    if not rows:
        return
    cols = [k for k in rows[0] if not isinstance(rows[0][k], dict)]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["step", "buckets", "ring"])
    p.add_argument("--size", default="small", choices=["small", "tiny", "base", "large", "so400m"])
    p.add_argument("--batch-size", type=int, default=8, help="per rank")
    p.add_argument("--global-batch", type=int, default=None, help="split over the ranks (overrides --batch-size)")
    p.add_argument("--seq-lens", default="256")
    p.add_argument("--tokens-per-batch", type=int, default=None)
    p.add_argument("--mixed", action="store_true", help="mixed budgets (per sample)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--fsdp", action="store_true")
    p.add_argument("--synthetic", action="store_true", help="random full-budget batches instead of the loader")
    p.add_argument("--vocab", type=int, default=256000, help="--synthetic: text vocabulary (SigLIP2: 256k)")
    p.add_argument("--kernel-impl", default="auto", choices=["auto", "triton", "reference"])
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--device", default=None)
    p.add_argument("--local-batch", type=int, default=4096, help="ring: per-rank batch")
    p.add_argument("--dim", type=int, default=1152, help="ring: embedding width")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "siglip2-bench-train"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)  # before environment(), which reports the thread count
    from siglip2.profile.timing import environment

    rows = {"step": lambda a: [bench_step(a)], "buckets": bench_buckets, "ring": bench_ring}[args.what](args)
    rows = [r for r in rows if r is not None]
    if not rows:
        return
    env = environment()
    if args.what == "step":  # `buckets` parses this line
        print(json.dumps({**rows[0], **env}))
        return
    for r in rows:
        print(json.dumps({**r, **env}))
    _table(rows)


if __name__ == "__main__":
    main()
