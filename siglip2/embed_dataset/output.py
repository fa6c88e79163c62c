"""The files of an embed-dataset run: `run.json` (the arguments, checked on resume), one image shard per unit
(`img-<unit>.safetensors` + `.keys.txt`, `txt-<unit>.*` for captions; written atomically, keys and texts first,
the image shard last: its presence marks the unit done), then `errors.jsonl` and `manifest.json` from rank 0.

A keys file holds one line per embedding row. A plain key is written as it is; a key that a line cannot hold
verbatim (a line break of any kind, a leading `"`, an empty key, or a lone surrogate: a non-UTF-8 file name
decoded with surrogateescape) is written as its JSON string literal, which starts with `"`. `read_keys` undoes it,
so every key round-trips exactly (`os.fsencode(key)` gives back a non-UTF-8 file name's bytes).
"""

from __future__ import annotations

import hashlib
import json
import os

from ..checkpoints.loading import atomic_write_text, remove_stale_temps
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


def encode_key(key: str) -> str:
    """One keys-file line for `key` (without its newline): see the module docstring."""
    try:
        key.encode("utf-8")
        plain = key != "" and not key.startswith('"') and key.splitlines() == [key]
    except UnicodeEncodeError:
        plain = False
    return key if plain else json.dumps(key)


def decode_key(line: str) -> str:
    return json.loads(line) if line.startswith('"') else line


def read_keys(path: str | os.PathLike) -> list[str]:
    """The keys of a keys file, one per embedding row, exactly as they were embedded."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    # split on "\n" only: encoded lines hold no line break, plain ones hold none of str.splitlines' others either
    return [decode_key(line) for line in text.split("\n")[:-1]]


def weights_digest(directory: str) -> str:
    """sha256 over the checkpoint's weight files (`*.safetensors` and the shard index), names and bytes streamed.
    All the bytes, not size + mtime or the header: an edit that keeps shapes keeps the header and the size, and
    mtime misses a copy that keeps it; streaming a few GB takes seconds against an embedding job's hours, and the
    files are in the page cache (the model was just loaded from them)."""
    h = hashlib.sha256()
    names = sorted(n for n in os.listdir(directory) if n.endswith((".safetensors", ".safetensors.index.json")))
    for name in names:
        h.update(name.encode("utf-8", "surrogateescape") + b"\0")
        with open(os.path.join(directory, name), "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _read_json(path: str, what: str, kind: type) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: {what} is not valid JSON ({e}); move it away or use a new --out") from None
    if not isinstance(value, kind):
        raise ValueError(
            f"{path}: {what} should hold a JSON {kind.__name__}, got {type(value).__name__}; "
            "move it away or use a new --out"
        )
    return value


def check_run(out: str, run: dict, rank: int) -> None:
    """Record the run's arguments in out/run.json, or refuse when a different run is there."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out: {out!r} exists and is not a directory; give a directory")
    path = os.path.join(out, RUN_FILE)
    if os.path.exists(path):
        old = _read_json(path, "the run's arguments", dict)
        assert isinstance(old, dict)
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


def _shard_meta(path: str) -> dict:
    """The siglip2 metadata of a shard we wrote; ValueError naming the file when it is unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            meta = json.loads((f.metadata() or {})["siglip2"])
            rows = f.get_slice("embeddings").get_shape()[0]
        if not isinstance(meta, dict) or int(meta["rows"]) != rows:
            raise ValueError(f"metadata rows {meta.get('rows') if isinstance(meta, dict) else meta!r} != {rows}")
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, KeyError, ...
        raise ValueError(f"{path}: not a complete embed-dataset shard ({type(e).__name__}: {e})") from None
    return meta


def unit_problem(out: str, unit: Unit, run_id: str) -> str | None:
    """None when the unit's files are all there and complete, else why not (the unit is to be redone). A shard of
    another run is refused: it is not ours to overwrite."""
    img = os.path.join(out, f"img-{unit.name}.safetensors")
    if not os.path.exists(img):
        return "not written yet"
    try:
        meta = _shard_meta(img)
    except ValueError as e:
        return str(e)
    if meta.get("run") != run_id:
        raise ValueError(f"{img}: comes from a different run; use a new --out")
    files = [("img", int(meta["rows"]))] + ([("txt", int(meta["texts"]))] if int(meta.get("texts", 0)) else [])
    for prefix, rows in files:
        keys = os.path.join(out, f"{prefix}-{unit.name}.keys.txt")
        try:
            n = len(read_keys(keys))
        except FileNotFoundError:
            return f"{keys} is missing"
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return f"{keys} is unreadable ({e})"
        if n != rows:
            return f"{keys} holds {n} keys for {rows} rows"
        if prefix == "txt":
            try:
                if int(_shard_meta(os.path.join(out, f"txt-{unit.name}.safetensors"))["rows"]) != rows:
                    return f"txt-{unit.name}.safetensors does not match its keys"
            except ValueError as e:
                return str(e)
    return None


def unit_done(out: str, unit: Unit) -> bool:
    """Whether the unit's image shard exists (its files may still be incomplete: `unit_problem` checks them)."""
    return os.path.exists(os.path.join(out, f"img-{unit.name}.safetensors"))


def save_unit(out: str, unit: Unit, buf: dict, run_id: str, store_dtype, dims) -> int:
    """Write one unit's shards (texts first, the image shard last); returns its image rows."""
    import torch
    from safetensors.torch import save_file

    def save(prefix, rows, keys, dim, extra):
        emb = torch.cat(rows).to("cpu", store_dtype) if rows else torch.zeros(0, dim, dtype=store_dtype)
        keys_text = "".join(encode_key(k) + "\n" for k in keys)
        atomic_write_text(os.path.join(out, f"{prefix}-{unit.name}.keys.txt"), keys_text)
        path = os.path.join(out, f"{prefix}-{unit.name}.safetensors")
        remove_stale_temps(path)  # a killed run's shard temp file: its process is gone
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
    shards, errors, counts = [], [], {"inputs": 0, "images": 0, "texts": 0, "errors": 0}
    for u in units:
        # every unit, other ranks' too, is checked whole: a manifest never names a missing or truncated file
        problem = unit_problem(out, u, run_hash(run_cfg))
        if problem is not None:
            raise ValueError(f"{out}: unit {u.name} is incomplete ({problem}); rerun the same command to redo it")
        meta = _shard_meta(os.path.join(out, f"img-{u.name}.safetensors"))
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
        "weights_sha256": run_cfg["weights_sha256"],
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
