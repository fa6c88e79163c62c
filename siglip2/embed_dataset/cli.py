"""`siglip2 embed-dataset INPUT --out DIR`: embed an image collection (and its captions) into safetensors shards.

Work is cut into units that do not depend on the number of processes: `--shard-size` consecutive inputs of a
folder / list / table, or one webdataset tar. Unit j is written as `img-0000j.safetensors` (+ `img-0000j.keys.txt`,
and `txt-0000j.*` for captions); under torchrun rank r takes units j = r, r + W, ..., so the union over ranks is
the single-process output file for file. DataLoader workers decode, resize and patchify
(`siglip2.data.NaFlexStream`); the main process copies pinned batches to the device on a side stream one batch
ahead (`DevicePrefetcher`), runs the packed model (`siglip2.fast.Siglip2Model`) and writes each unit atomically
(output.py: keys and text first, the image shard last: its presence marks the unit done). A rerun with the same
arguments skips complete units and redoes those with a missing, truncated or short file; other arguments or other
weights (`weights_sha256`, output.py) are refused (`run.json` holds them). Keys files: see output.py. Rank 0
writes `errors.jsonl` and `manifest.json` after a barrier (gloo).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .output import ERRORS, check_run, run_hash, save_unit, unit_problem, write_manifest

if TYPE_CHECKING:
    import torch

    from ..data import FileSource, Unit, WebDatasetSource
    from ..processing.image_processing import Siglip2ImageProcessor
    from ..processing.tokenization import Siglip2Tokenizer

STOP_AFTER_ENV = "SIGLIP2_EMBED_DATASET_STOP_AFTER"  # test hook: interrupt after writing this many units


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..pipeline import DEFAULT_MODEL

    p.add_argument("input", metavar="INPUT", help="folder, .txt list, .csv/.tsv/.jsonl table, or webdataset .tar(s)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint directory or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--max-num-patches", type=int, default=None, help="NaFlex budget (default: the checkpoint's)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch-size", type=int, default=None, help="images per batch (default 64)")
    g.add_argument("--tokens-per-batch", type=int, default=None, help="pack images until valid tokens reach T")
    per_rank = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: cores per process
    p.add_argument(
        "--num-workers",
        type=int,
        default=max(1, min(8, per_rank)),
        help="DataLoader workers per process (default: the process's share of the cores, at most 8)",
    )
    p.add_argument("--image-column", default="image", help="CSV/JSONL image column (default image)")
    p.add_argument("--text-column", default=None, help="CSV/JSONL caption column (default caption, else text)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["bfloat16", "float16", "float32"],
        help="model dtype (default bfloat16 on CUDA, float32 on CPU)",
    )
    p.add_argument("--store-dtype", default="float16", choices=["float16", "float32"], help="stored embeddings")
    p.add_argument("--fast-decode", action="store_true", help="JPEG draft decoding at reduced size (inexact)")
    p.add_argument("--shard-size", type=int, default=10000, help="inputs per output shard (file inputs)")
    p.add_argument("--raw", action="store_true", help="store pooled embeddings without L2 normalization")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK when available)")


@dataclass
class _Job:
    """What a run works with, resolved from its arguments."""

    device: torch.device
    dtype: torch.dtype
    source: FileSource | WebDatasetSource
    model: Any  # siglip2.fast.Siglip2Model
    directory: str
    image_processor: Siglip2ImageProcessor
    max_num_patches: int
    batch_size: int | None  # None: --tokens-per-batch
    tokenizer: Siglip2Tokenizer | None  # None: captions are not embedded
    out: str
    dims: tuple[int, int]  # image and text embedding widths


def run(args: argparse.Namespace) -> int:
    """Check the arguments, open the input and the model, claim --out (run.json), embed this rank's units that are
    not done yet, then (rank 0, after a barrier) write errors.jsonl and manifest.json."""
    import torch.distributed as dist

    from ..data import plan_units, world_info

    _check_args(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer runs in forked workers
    started_dist = _init_distributed()
    rank, world = world_info()
    t0 = time.perf_counter()
    try:
        job = _open(args, rank)
        run_cfg = _run_config(args, job)
        _claim_output(job.out, run_cfg, rank, world)
        units = plan_units(job.source, args.shard_size)
        todo = _todo(job.out, units[rank::world], run_hash(run_cfg))
        written, n_images, t_loop = _embed_units(job, todo, args, run_hash(run_cfg), rank, world)
        if world > 1:
            dist.barrier()
        if rank == 0:
            m = write_manifest(job.out, units, run_cfg, args, job.directory, job.dims)
            c, dt = m["counts"], time.perf_counter() - t0
            print(
                f"embed-dataset: {c['images']} images, {c['texts']} texts, {c['errors']} errors ({ERRORS}) "
                f"in {len(units)} shards -> {job.out}; this run, rank 0: {written} shards, {n_images} images in "
                f"{t_loop:.1f} s ({n_images / max(t_loop, 1e-9):.1f} images/s; {dt:.1f} s with start-up)",
                file=sys.stderr,
            )
        return 0
    finally:
        if started_dist and dist.is_initialized():
            dist.destroy_process_group()


def _todo(out: str, units: list[Unit], run_id: str) -> list[Unit]:
    """The units to (re)do: not written, or with a file missing, truncated or short (a keys file deleted by hand,
    a shard cut off by a full disk). A unit is all its files or it is redone, so a manifest never names a lost
    file."""
    todo = []
    for u in units:
        problem = unit_problem(out, u, run_id)
        if problem is None:
            continue
        if problem != "not written yet":
            print(f"siglip2 embed-dataset: redoing unit {u.name}: {problem}", file=sys.stderr)
        todo.append(u)
    return todo


def _check_args(args: argparse.Namespace) -> None:
    from ..pipeline import MAX_NUM_PATCHES

    for name in ("batch_size", "tokens_per_batch", "shard_size", "max_num_patches"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {v}")
    if args.max_num_patches is not None and args.max_num_patches > MAX_NUM_PATCHES:
        # memory grows with its square: a huge budget upscales every image and then fails allocating TiBs
        raise ValueError(f"--max-num-patches: expected 1..{MAX_NUM_PATCHES}, got {args.max_num_patches}")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers: must be >= 0, got {args.num_workers}")


def _init_distributed():
    import datetime

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        # gloo even on GPUs: only a barrier and a tiny all_reduce cross ranks; ranks may finish hours apart
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
        return True
    return False


def _open(args: argparse.Namespace, rank: int) -> _Job:
    """The device and dtype, the input, the model with its processor, the batching and the tokenizer."""
    import torch

    from ..data import open_source
    from ..pipeline import MAX_NUM_PATCHES, load_model, resolve_device
    from ..processing.image_processing import Siglip2ImageProcessor, image_processor_from_pretrained

    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(args.device)  # a bad --device is one line, before the model loads
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)  # one GPU per torchrun process
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    source = open_source(args.input, image_column=args.image_column, text_column=args.text_column)
    model, directory = load_model(args.model, device=device, dtype=dtype)
    ip = image_processor_from_pretrained(directory)
    if not isinstance(ip, Siglip2ImageProcessor):
        raise ValueError(f"--model: embed-dataset needs a NaFlex (siglip2) checkpoint, {directory!r} is FixRes")
    M = int(args.max_num_patches or ip.max_num_patches)
    if M > MAX_NUM_PATCHES:  # only the checkpoint's own value can get here: --max-num-patches is checked
        raise ValueError(
            f"--model: {directory!r} has max_num_patches {M} in its preprocessor config (at most {MAX_NUM_PATCHES}); "
            "pass --max-num-patches"
        )
    if args.tokens_per_batch is not None and args.tokens_per_batch < M:
        raise ValueError(f"--tokens-per-batch: must be at least max_num_patches ({M}), got {args.tokens_per_batch}")
    return _Job(
        device=device,
        dtype=dtype,
        source=source,
        model=model,
        directory=directory,
        image_processor=ip,
        max_num_patches=M,
        batch_size=None if args.tokens_per_batch else (args.batch_size or 64),
        tokenizer=_tokenizer(source, directory, rank),
        out=os.path.abspath(args.out),
        dims=(model.config.vision_config.hidden_size, model.config.text_config.projection_size),
    )


def _tokenizer(source: FileSource | WebDatasetSource, directory: str, rank: int) -> Siglip2Tokenizer | None:
    """The checkpoint's tokenizer when there are captions to embed (tars may hold some: embedded if we can)."""
    from ..data import FileSource
    from ..processing.tokenization import Siglip2Tokenizer

    if isinstance(source, FileSource):
        return Siglip2Tokenizer.from_pretrained(directory) if source.has_captions else None
    if os.path.exists(os.path.join(directory, "tokenizer.json")):
        return Siglip2Tokenizer.from_pretrained(directory)
    if rank == 0:
        print(
            f"siglip2 embed-dataset: no tokenizer.json in {directory!r}: captions (txt) are not embedded",
            file=sys.stderr,
        )
    return None


def _run_config(args: argparse.Namespace, job: _Job) -> dict:
    """What run.json records: everything the embeddings depend on (a resume must match it)."""
    from .output import keys_digest, sha256_file, weights_digest

    ip = job.image_processor
    return {
        "input": os.path.abspath(args.input) if "://" not in args.input else args.input,
        "input_digest": keys_digest(job.source),
        "model": os.path.abspath(job.directory),
        "config_sha256": sha256_file(os.path.join(job.directory, "config.json")),
        "weights_sha256": weights_digest(job.directory),
        "patch_size": int(ip.patch_size),
        "max_num_patches": job.max_num_patches,
        "resample": int(ip.resample),
        "image_mean": ip.image_mean,
        "image_std": ip.image_std,
        "batch_size": job.batch_size,
        "tokens_per_batch": args.tokens_per_batch,
        "shard_size": args.shard_size,
        "dtype": str(job.dtype).replace("torch.", ""),
        "store_dtype": args.store_dtype,
        "device": job.device.type,
        "fast_decode": bool(args.fast_decode),
        "normalized": not args.raw,
        "image_column": args.image_column,
        "text_column": args.text_column,
    }


def _claim_output(out: str, run_cfg: dict, rank: int, world: int) -> None:
    """Rank 0 checks or writes run.json first; the other ranks check it after a barrier."""
    import torch.distributed as dist

    if rank == 0:
        check_run(out, run_cfg, rank)
    if world > 1:
        dist.barrier()
    if rank != 0:
        check_run(out, run_cfg, rank)


def _embed_units(job: _Job, todo: list[Unit], args: argparse.Namespace, run_id: str, rank: int, world: int):
    """Embed `todo` and write each unit when its last item arrives. DataLoader workers decode and batch
    (NaFlexStream); the main process runs the model. Returns (units written, images, seconds in the loop)."""
    import torch
    from tqdm import tqdm

    from ..data import DevicePrefetcher, FileSource, NaFlexStream

    stream = NaFlexStream(
        job.source,
        todo,
        job.image_processor,
        max_num_patches=job.max_num_patches,
        batch_size=job.batch_size,
        tokens_per_batch=args.tokens_per_batch,
        fast_decode=args.fast_decode,
        dtype=job.dtype if job.dtype != torch.float32 else None,
        tokenizer=job.tokenizer,
    )
    loader = stream.loader(num_workers=args.num_workers, pin_memory=job.device.type == "cuda")
    total = sum(u.stop - u.start for u in todo) if isinstance(job.source, FileSource) else None
    bar = tqdm(total=total, unit="img", disable=rank != 0, dynamic_ncols=True, desc=f"embed (rank 0 of {world})")
    store_dtype = getattr(torch, args.store_dtype)
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0"))
    bufs, n_errors, n_images, written = {}, 0, 0, 0
    by_index = {u.index: u for u in todo}
    t_loop = time.perf_counter()
    with torch.no_grad():
        for item, b, first, last in DevicePrefetcher(loader, job.device):
            buf = bufs.setdefault(
                item["unit"], {"img": [], "img_keys": [], "txt": [], "txt_keys": [], "errors": [], "n_inputs": 0}
            )
            if first:  # an item's errors and input count once, however many batches it has
                buf["errors"].extend([list(e) for e in item["errors"]])
                buf["n_inputs"] += item["n_inputs"]
                n_errors += len(item["errors"])
            if b is not None:
                _embed_batch(job, b, buf, args.raw)
            if last:
                bar.update(item["n_inputs"])
                bar.set_postfix(errors=n_errors, refresh=False)
                if item["last"]:
                    unit = by_index[item["unit"]]
                    n_images += save_unit(job.out, unit, bufs.pop(item["unit"]), run_id, store_dtype, job.dims)
                    written += 1
                    if stop_after and written >= stop_after:
                        raise KeyboardInterrupt(f"{STOP_AFTER_ENV}={stop_after}: stopped after {written} unit(s)")
    bar.close()
    t_loop = time.perf_counter() - t_loop
    if bufs:
        raise RuntimeError(f"embed-dataset: units {sorted(bufs)} did not finish (a worker ended early)")
    return written, n_images, t_loop


def _embed_batch(job: _Job, b: dict, buf: dict, raw: bool) -> None:
    """One batch's image embeddings, and its captions' where it has any, into its unit's buffer."""
    feats = job.model.get_image_features(
        pixel_values=b["pixel_values"].to(job.device, job.dtype, non_blocking=True),
        pixel_attention_mask=b["pixel_attention_mask"].to(job.device),
        spatial_shapes=b["spatial_shapes"].to(job.device),
    )
    buf["img"].append(_embedding(feats, raw))
    buf["img_keys"].extend(b["keys"])
    if job.tokenizer is not None and bool(b["has_caption"].any()):
        sel = b["has_caption"].nonzero().flatten().tolist()
        kw = {k: b[k][sel].to(job.device) for k in ("input_ids", "attention_mask") if k in b}
        buf["txt"].append(_embedding(job.model.get_text_features(**kw), raw))
        buf["txt_keys"].extend(b["keys"][i] for i in sel)


def _embedding(x: Any, raw: bool) -> torch.Tensor:
    from ..pipeline import pooled

    x = pooled(x).float()
    return x if raw else x / x.norm(p=2, dim=-1, keepdim=True)
