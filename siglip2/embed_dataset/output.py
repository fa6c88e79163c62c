"""The files of an embed-dataset run: `run.json` (the arguments, checked on resume), one image shard per unit
(`img-<unit>.safetensors` + `.keys.txt`, `txt-<unit>.*` for captions; written atomically, keys and texts first,
the image shard last: its presence marks the unit done), then `errors.jsonl` and `manifest.json` from rank 0.
"""

from __future__ import annotations

import hashlib
import json
import os

from ..checkpoints.loading import atomic_write_text
from ..data import FileSource, Unit

RUN_FILE, MANIFEST, ERRORS = "run.json", "manifest.json", "errors.jsonl"


def run_hash(run_cfg: dict) -> str:
    """The run's identity, stored in every shard's metadata (a shard of another run is refused)."""
    return hashlib.sha256(json.dumps(run_cfg, sort_keys=True).encode()).hexdigest()[:16]


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def keys_digest(source) -> str:
    h = hashlib.sha256()
    for x in (r.key for r in source) if isinstance(source, FileSource) else source.shards:
        h.update(x.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def check_run(out: str, run: dict, rank: int) -> None:
    """Record the run's arguments in out/run.json, or refuse when a different run is there."""
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


def unit_done(out: str, unit: Unit) -> bool:
    return os.path.exists(os.path.join(out, f"img-{unit.name}.safetensors"))


def save_unit(out: str, unit: Unit, buf: dict, run_id: str, store_dtype, dims) -> int:
    """Write one unit's shards (texts first, the image shard last); returns its image rows."""
    import torch
    from safetensors.torch import save_file

    def save(prefix, rows, keys, dim, extra):
        emb = torch.cat(rows).to("cpu", store_dtype) if rows else torch.zeros(0, dim, dtype=store_dtype)
        atomic_write_text(os.path.join(out, f"{prefix}-{unit.name}.keys.txt"), "".join(k + "\n" for k in keys))
        path = os.path.join(out, f"{prefix}-{unit.name}.safetensors")
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            # one metadata key: safetensors writes several in a per-process random (hash map) order
            meta = {"siglip2": json.dumps(dict(extra, run=run_id, rows=len(keys)), sort_keys=True)}
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


def write_manifest(out, units, run_cfg, args, directory, dims) -> dict:
    from safetensors import safe_open

    shards, errors, counts = [], [], {"inputs": 0, "images": 0, "texts": 0, "errors": 0}
    for u in units:
        with safe_open(os.path.join(out, f"img-{u.name}.safetensors"), "pt") as f:
            meta = json.loads(f.metadata()["siglip2"])
        if meta.get("run") != run_hash(run_cfg):
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
