"""`siglip2 embed-dataset INPUT --out DIR`: embed an image collection (and its captions) into safetensors shards.

Work is cut into units that do not depend on the number of processes: `--shard-size` consecutive inputs of a
folder / list / table, or one webdataset tar. Unit j is written as `img-0000j.safetensors` (+ `img-0000j.keys.txt`,
and `txt-0000j.*` for captions); under torchrun rank r takes units j = r, r + W, ..., so the union over ranks is
the single-process output file for file. DataLoader workers decode, resize and patchify (`siglip2.data`); the
main process copies pinned batches to the device on a side stream one batch ahead, runs the packed model
(`siglip2.fast.Siglip2Model`) and writes each unit atomically (keys and text first, the image shard last: its
presence marks the unit done). A rerun with the same arguments skips done units; other arguments are refused
(`run.json` holds them). Rank 0 writes `errors.jsonl` and `manifest.json` after a barrier (gloo).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..data import FileSource, WebDatasetSource

RUN_FILE, MANIFEST, ERRORS = "run.json", "manifest.json", "errors.jsonl"
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


@dataclass(frozen=True)
class Unit:
    index: int
    start: int = 0  # file sources: inputs [start, stop)
    stop: int = 0

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


def plan_units(source: FileSource | WebDatasetSource, shard_size: int) -> list[Unit]:
    from ..data import FileSource

    if isinstance(source, FileSource):
        n = len(source)
        return [Unit(j, j * shard_size, min(n, (j + 1) * shard_size)) for j in range(math.ceil(n / shard_size))]
    return [Unit(j) for j in range(len(source.shards))]


class _Stream:
    """The DataLoader's IterableDataset: yields one item per chunk of a unit, {unit, last, n_inputs, batches,
    errors}. Map-style sources spread chunks over workers round-robin (so they arrive in order); webdataset
    units (tars) go whole to one worker each."""

    def __init__(self, source, units, image_processor, *, M, batch_size, tokens, fast, dtype, tokenizer):
        self.source, self.units, self.ip = source, units, image_processor
        self.M, self.batch_size, self.tokens, self.fast = M, batch_size, tokens, fast
        self.dtype, self.tokenizer = dtype, tokenizer
        # a chunk is what one worker decodes before batching: one batch, or a few token budgets' worth
        self.chunk = batch_size if tokens is None else max(1, tokens // M) * 4

    def __iter__(self):
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        wid, k = (info.id, info.num_workers) if info else (0, 1)
        from ..data import FileSource

        if isinstance(self.source, FileSource):
            chunks = [
                (u, s, min(s + self.chunk, u.stop)) for u in self.units for s in range(u.start, u.stop, self.chunk)
            ]
            for u, s, e in chunks[wid::k]:
                yield self._process(u, e >= u.stop, [self.source[i] for i in range(s, e)], [])
            return
        for u in self.units[wid::k]:
            errors: list = []
            records = self.source.iter_shard(u.index, on_error=lambda e, errs=errors: errs.append((e.key, e.reason)))
            prev = None
            for chunk in _chunked(records, self.chunk):
                if prev is not None:
                    yield self._process(u, False, prev, _take(errors))
                prev = chunk
            yield self._process(u, True, prev or [], _take(errors))  # always one last item: marks the unit done

    def _process(self, unit, last, records, errors):
        from ..data import SampleError, decode_image, iter_token_batches, naflex_collate, num_patches

        P = int(self.ip.patch_size)
        good = []
        for r in records:
            try:
                img = decode_image(r, fast=(P, self.M) if self.fast else None)
            except SampleError as e:
                errors.append((e.key, e.reason))
                continue
            h, w = img.info.get("naflex_full_size", (img.height, img.width))
            good.append(((r.key, img, r.caption), num_patches(h, w, P, self.M)))
        if self.tokens is None:
            groups = [good] if good else []
        else:
            groups = list(iter_token_batches(good, lambda x: x[1], self.tokens))
        batches = []
        for g in groups:
            b = naflex_collate(
                [s for s, _ in g], self.ip, max_num_patches=self.M, tokenizer=self.tokenizer, dtype=self.dtype
            )
            b["num_tokens"] = sum(n for _, n in g)
            batches.append(b)
        return {"unit": unit.index, "last": last, "n_inputs": len(records), "batches": batches, "errors": errors}


def _chunked(it, n):
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def _take(errors: list) -> list:
    out = list(errors)
    errors.clear()
    return out


def _as_iterable_dataset(stream):
    import torch.utils.data

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(stream)

    return Stream()


class _Prefetch:
    """Flattens loader items into (item, batch | None, first, last) and copies the next batch's tensors to the
    device (non_blocking, from pinned memory, on a side stream) while the current one runs. On CPU batches pass
    through. An item without batches (all its images bad) still comes once, with batch None."""

    def __init__(self, items, device):
        import torch

        self.items, self.device = items, device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _flat(self):
        for item in self.items:
            n = len(item["batches"])
            if n == 0:
                yield item, None, True, True
            for i, b in enumerate(item["batches"]):
                yield item, b, i == 0, i == n - 1

    def _to(self, entry):
        import torch

        item, b, first, last = entry
        if self.stream is None or b is None:
            return entry
        with torch.cuda.stream(self.stream):
            b = {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
        return item, b, first, last

    def _ready(self, entry):
        import torch

        if self.stream is not None and entry[1] is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_stream(self.stream)
            for v in entry[1].values():
                if isinstance(v, torch.Tensor):
                    v.record_stream(cur)
        return entry

    def __iter__(self):
        nxt = None
        for entry in self._flat():
            cur, nxt = nxt, self._to(entry)  # the copy of the next batch is queued before the current one runs
            if cur is not None:
                yield self._ready(cur)
        if nxt is not None:
            yield self._ready(nxt)


def _sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _keys_digest(source) -> str:
    from ..data import FileSource

    h = hashlib.sha256()
    for x in (r.key for r in source) if isinstance(source, FileSource) else source.shards:
        h.update(x.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def _check_run(out: str, run: dict, rank: int) -> None:
    """Record the run's arguments in out/run.json, or refuse when a different run is there."""
    from ..checkpoints.loading import atomic_write_text

    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out: {out!r} is a file; give a directory")
    path = os.path.join(out, RUN_FILE)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = [
            f"{k}: {old.get(k)!r} -> {run.get(k)!r}" for k in sorted(set(old) | set(run)) if old.get(k) != run.get(k)
        ]
        if diff:
            raise ValueError(
                f"--out {out!r} holds a run with different arguments ({'; '.join(diff)}); "
                "rerun with the same arguments to resume, or use a new --out"
            )
        return
    stray = [n for n in os.listdir(out) if not n.startswith(".")] if os.path.isdir(out) else []
    if stray:
        raise ValueError(
            f"--out {out!r} is not empty and holds no {RUN_FILE} (found {stray[0]!r}); use a new directory"
        )
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        atomic_write_text(path, json.dumps(run, indent=2, sort_keys=True) + "\n")


def _unit_done(out: str, unit: Unit) -> bool:
    return os.path.exists(os.path.join(out, f"img-{unit.name}.safetensors"))


def _save_unit(out: str, unit: Unit, buf: dict, run_hash: str, store_dtype, dims) -> int:
    import torch
    from safetensors.torch import save_file

    from ..checkpoints.loading import atomic_write_text

    def save(prefix, rows, keys, dim, extra):
        emb = torch.cat(rows).to("cpu", store_dtype) if rows else torch.zeros(0, dim, dtype=store_dtype)
        atomic_write_text(os.path.join(out, f"{prefix}-{unit.name}.keys.txt"), "".join(k + "\n" for k in keys))
        path = os.path.join(out, f"{prefix}-{unit.name}.safetensors")
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            # one metadata key: safetensors writes several in a per-process random (hash map) order
            meta = {"siglip2": json.dumps(dict(extra, run=run_hash, rows=len(keys)), sort_keys=True)}
            save_file({"embeddings": emb.contiguous()}, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    if buf["txt_keys"]:
        save("txt", buf["txt"], buf["txt_keys"], dims[1], {})
    save(
        "img",
        buf["img"],
        buf["img_keys"],
        dims[0],
        {"errors": buf["errors"], "inputs": buf["n_inputs"], "texts": len(buf["txt_keys"])},
    )
    return len(buf["img_keys"])


def _init_distributed():
    import datetime

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        # gloo even on GPUs: only a barrier and a tiny all_reduce cross ranks; ranks may finish hours apart
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
        return True
    return False


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist
    from tqdm import tqdm

    from ..data import FileSource, open_source, world_info
    from ..pipeline import _pooled, load_model
    from ..processing.image_processing import Siglip2ImageProcessor, image_processor_from_pretrained
    from ..processing.tokenization import Siglip2Tokenizer

    for name in ("batch_size", "tokens_per_batch", "shard_size", "max_num_patches"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {v}")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers: must be >= 0, got {args.num_workers}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer runs in forked workers
    started_dist = _init_distributed()
    rank, world = world_info()
    t0 = time.perf_counter()
    try:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local)  # one GPU per torchrun process
        dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
        source = open_source(args.input, image_column=args.image_column, text_column=args.text_column)
        model, directory = load_model(args.model, device=device, dtype=dtype)
        ip = image_processor_from_pretrained(directory)
        if not isinstance(ip, Siglip2ImageProcessor):
            raise ValueError(f"--model: embed-dataset needs a NaFlex (siglip2) checkpoint, {directory!r} is FixRes")
        M = int(args.max_num_patches or ip.max_num_patches)
        if args.tokens_per_batch is not None and args.tokens_per_batch < M:
            raise ValueError(f"--tokens-per-batch: must be at least max_num_patches ({M}), got {args.tokens_per_batch}")
        batch_size = None if args.tokens_per_batch else (args.batch_size or 64)
        tokenizer = None
        if isinstance(source, FileSource) and source.has_captions:
            tokenizer = Siglip2Tokenizer.from_pretrained(directory)
        elif not isinstance(source, FileSource):  # captions are only seen in the tars: embed them if we can
            if os.path.exists(os.path.join(directory, "tokenizer.json")):
                tokenizer = Siglip2Tokenizer.from_pretrained(directory)
            elif rank == 0:
                print(
                    f"siglip2 embed-dataset: no tokenizer.json in {directory!r}: captions (txt) are not embedded",
                    file=sys.stderr,
                )
        out = os.path.abspath(args.out)
        run_cfg = {
            "input": os.path.abspath(args.input) if "://" not in args.input else args.input,
            "input_digest": _keys_digest(source),
            "model": os.path.abspath(directory),
            "config_sha256": _sha256_file(os.path.join(directory, "config.json")),
            "patch_size": int(ip.patch_size),
            "max_num_patches": M,
            "resample": int(ip.resample),
            "image_mean": ip.image_mean,
            "image_std": ip.image_std,
            "batch_size": batch_size,
            "tokens_per_batch": args.tokens_per_batch,
            "shard_size": args.shard_size,
            "dtype": str(dtype).replace("torch.", ""),
            "store_dtype": args.store_dtype,
            "device": device.type,
            "fast_decode": bool(args.fast_decode),
            "normalized": not args.raw,
            "image_column": args.image_column,
            "text_column": args.text_column,
        }
        run_hash = hashlib.sha256(json.dumps(run_cfg, sort_keys=True).encode()).hexdigest()[:16]
        if rank == 0:
            _check_run(out, run_cfg, rank)
        if world > 1:
            dist.barrier()
        if rank != 0:
            _check_run(out, run_cfg, rank)

        units = plan_units(source, args.shard_size)
        todo = [u for u in units[rank::world] if not _unit_done(out, u)]
        stream = _Stream(
            source,
            todo,
            ip,
            M=M,
            batch_size=batch_size,
            tokens=args.tokens_per_batch,
            fast=args.fast_decode,
            dtype=dtype if dtype != torch.float32 else None,
            tokenizer=tokenizer,
        )
        loader = torch.utils.data.DataLoader(
            _as_iterable_dataset(stream),
            batch_size=None,
            num_workers=args.num_workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=2 if args.num_workers else None,
        )
        total = sum(u.stop - u.start for u in todo) if isinstance(source, FileSource) else None
        bar = tqdm(total=total, unit="img", disable=rank != 0, dynamic_ncols=True, desc=f"embed (rank 0 of {world})")
        store_dtype = getattr(torch, args.store_dtype)
        dims = (model.config.vision_config.hidden_size, model.config.text_config.projection_size)
        stop_after = int(os.environ.get(STOP_AFTER_ENV, "0"))
        bufs, n_errors, n_images, written = {}, 0, 0, 0
        by_index = {u.index: u for u in todo}

        def embed(x):
            x = _pooled(x).float()
            return x if args.raw else x / x.norm(p=2, dim=-1, keepdim=True)

        t_loop = time.perf_counter()
        with torch.no_grad():
            for item, b, first, last in _Prefetch(loader, device):
                buf = bufs.setdefault(
                    item["unit"], {"img": [], "img_keys": [], "txt": [], "txt_keys": [], "errors": [], "n_inputs": 0}
                )
                if first:  # an item's errors and input count once, however many batches it has
                    buf["errors"].extend([list(e) for e in item["errors"]])
                    buf["n_inputs"] += item["n_inputs"]
                    n_errors += len(item["errors"])
                if b is not None:
                    feats = model.get_image_features(
                        pixel_values=b["pixel_values"].to(device, dtype, non_blocking=True),
                        pixel_attention_mask=b["pixel_attention_mask"].to(device),
                        spatial_shapes=b["spatial_shapes"].to(device),
                    )
                    buf["img"].append(embed(feats))
                    buf["img_keys"].extend(b["keys"])
                    if tokenizer is not None and bool(b["has_caption"].any()):
                        sel = b["has_caption"].nonzero().flatten().tolist()
                        kw = {k: b[k][sel].to(device) for k in ("input_ids", "attention_mask") if k in b}
                        buf["txt"].append(embed(model.get_text_features(**kw)))
                        buf["txt_keys"].extend(b["keys"][i] for i in sel)
                if last:
                    bar.update(item["n_inputs"])
                    bar.set_postfix(errors=n_errors, refresh=False)
                    if item["last"]:
                        n_images += _save_unit(
                            out, by_index[item["unit"]], bufs.pop(item["unit"]), run_hash, store_dtype, dims
                        )
                        written += 1
                        if stop_after and written >= stop_after:
                            raise KeyboardInterrupt(f"{STOP_AFTER_ENV}={stop_after}: stopped after {written} unit(s)")
        bar.close()
        t_loop = time.perf_counter() - t_loop
        if bufs:
            raise RuntimeError(f"embed-dataset: units {sorted(bufs)} did not finish (a worker ended early)")
        if world > 1:
            dist.barrier()
        if rank == 0:
            m = _write_manifest(out, units, run_cfg, args, directory, dims)
            dt = time.perf_counter() - t0
            c = m["counts"]
            print(
                f"embed-dataset: {c['images']} images, {c['texts']} texts, {c['errors']} errors ({ERRORS}) "
                f"in {len(units)} shards -> {out}; this run, rank 0: {written} shards, {n_images} images in "
                f"{t_loop:.1f} s ({n_images / max(t_loop, 1e-9):.1f} images/s; {dt:.1f} s with start-up)",
                file=sys.stderr,
            )
        return 0
    finally:
        if started_dist and dist.is_initialized():
            dist.destroy_process_group()


def _write_manifest(out, units, run_cfg, args, directory, dims) -> dict:
    from safetensors import safe_open

    from ..checkpoints.loading import atomic_write_text

    shards, errors, counts = [], [], {"inputs": 0, "images": 0, "texts": 0, "errors": 0}
    for u in units:
        with safe_open(os.path.join(out, f"img-{u.name}.safetensors"), "pt") as f:
            meta = json.loads(f.metadata()["siglip2"])
        if meta.get("run") != hashlib.sha256(json.dumps(run_cfg, sort_keys=True).encode()).hexdigest()[:16]:
            raise ValueError(f"{out}: img-{u.name}.safetensors comes from a different run; use a new --out")
        errs = meta["errors"]
        rows, texts = int(meta["rows"]), int(meta["texts"])
        entry = {"images": f"img-{u.name}.safetensors", "image_keys": f"img-{u.name}.keys.txt", "rows": rows}
        if texts:
            entry.update(texts=f"txt-{u.name}.safetensors", text_keys=f"txt-{u.name}.keys.txt", text_rows=texts)
        shards.append(entry)
        errors.extend(errs)
        counts["inputs"] += int(meta["inputs"])
        counts["images"] += rows
        counts["texts"] += texts
        counts["errors"] += len(errs)
    atomic_write_text(os.path.join(out, ERRORS), "".join(json.dumps({"key": k, "reason": r}) + "\n" for k, r in errors))
    manifest = {
        "model": str(args.model),
        "model_dir": run_cfg["model"],
        "config_sha256": run_cfg["config_sha256"],
        "preprocessing": {
            k: run_cfg[k]
            for k in ("patch_size", "max_num_patches", "resample", "image_mean", "image_std", "fast_decode")
        },
        "embedding": {
            "image_dim": dims[0],
            "text_dim": dims[1],
            "normalized": run_cfg["normalized"],
            "dtype": run_cfg["store_dtype"],
            "model_dtype": run_cfg["dtype"],
        },
        "input": run_cfg["input"],
        "counts": dict(counts, shards=len(units)),
        "errors_file": ERRORS,
        "shards": shards,
    }
    atomic_write_text(os.path.join(out, MANIFEST), json.dumps(manifest, indent=2) + "\n")
    return manifest
