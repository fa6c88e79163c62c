"""Checkpoint files: resolve a directory or hub id, read (sharded) safetensors, strict key check, atomic save.

Hub ids go through huggingface_hub and fetch only config, safetensors, preprocessor and tokenizer files.
"""
from __future__ import annotations

import os
import re

HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model"]


class CheckpointError(OSError):
    """A checkpoint could not be found, read or matched to the model."""


def resolve_dir(name_or_path, *, revision=None, cache_dir=None, local_files_only=False) -> str:
    """Return a local directory holding the checkpoint `name_or_path` (a directory, or a hub id to download)."""
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{path!r} is a file; expected a checkpoint directory (config.json + model.safetensors) or a hub id")
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1 or os.sep in path.replace("/", "")
    if looks_local:
        raise CheckpointError(f"checkpoint directory {path!r} does not exist")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a runtime dependency
        raise CheckpointError("loading a hub id needs huggingface_hub; pass a local directory instead") from e
    try:
        return snapshot_download(path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                 allow_patterns=HUB_PATTERNS)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"could not get {path!r} from the Hugging Face hub ({type(e).__name__}: {reason}). "
            f"It is neither a local directory nor in the hub cache (or the network is unreachable); "
            f"pass a local directory that holds config.json and model.safetensors"
        ) from e


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

def atomic_write_text(path: str, text: str) -> None:
    """Write through a temp file in the same directory, then rename: a crash never leaves half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_safetensors(path: str) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file not found") from e
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError on bad files
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt ({e})") from e


def read_state_dict(directory: str) -> dict:
    """Tensors of `model.safetensors`, or of every shard listed in `model.safetensors.index.json`."""
    import json

    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(single):
        return _read_safetensors(single)
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
        state = {}
        for shard in sorted(set(weight_map.values())):
            state.update(_read_safetensors(os.path.join(directory, shard)))
        missing = set(weight_map) - set(state)
        if missing:
            raise CheckpointError(f"{index}: tensors listed but absent from the shards: {sorted(missing)[:5]}")
        return state
    raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {directory!r}")


def match_state_dict(model, state: dict, allow_missing=()) -> dict:
    """Adapt a checkpoint's keys to `model` (standalone towers with/without prefix, full-model checkpoints into a
    tower, Conv2d patch weights) and raise one readable report of missing, unexpected and wrong-shape keys."""
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    prefix = getattr(model, "checkpoint_prefix", None)  # "vision_model." / "text_model." for standalone towers
    if prefix and not any(k in expected for k in state):
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped:
            state = stripped
    if not any(k in expected for k in state) and state:
        # a standalone tower checkpoint loaded into a model holding the tower under a prefix
        for p in ("vision_model.", "text_model."):
            if any(p + k in expected for k in state):
                state = {p + k: v for k, v in state.items()}
                break
    missing = sorted(k for k in set(expected) - set(state) if not k.startswith(tuple(allow_missing)))
    unexpected = sorted(set(state) - set(expected))
    if prefix:  # the other tower of a full checkpoint is expected to be left over
        other = "text_model." if prefix == "vision_model." else "vision_model."
        unexpected = [k for k in unexpected if not k.startswith(other) and k not in ("logit_scale", "logit_bias")]
    ignored = getattr(model, "ignore_on_load", ())  # e.g. the text tower of a dual-encoder checkpoint
    unexpected = [k for k in unexpected if not k.startswith(tuple(ignored))]
    wrong = [(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in expected
             if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        lines = [f"checkpoint does not match {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:10])}"
                         + (" ..." if len(unexpected) > 10 else ""))
        for k, got, want in wrong[:10]:
            lines.append(f"  wrong shape for {k}: checkpoint {got}, model {want}")
        raise CheckpointError("\n".join(lines))
    return {k: state[k] for k in expected if k in state}


def load_pretrained(cls, name_or_path, *, revision=None, dtype=None, device=None, cache_dir=None,
                    local_files_only=False, impl=None, kernel_impl="auto", **config_overrides):
    """`cls.from_pretrained`: config + strict weights from a directory or hub id.

    Extra keywords override config fields (e.g. `num_labels=10` for a fresh classifier). Only a classification
    head missing from the checkpoint (fine-tuning from a Siglip2Model checkpoint) is initialized instead of loaded,
    with a warning; any other mismatch raises a CheckpointError.
    """
    import warnings

    import torch

    directory = resolve_dir(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    config = cls.config_class.from_pretrained(directory)
    for key, value in config_overrides.items():
        if key != "num_labels" and not hasattr(config, key):
            raise TypeError(f"{cls.__name__}.from_pretrained got an unexpected keyword argument {key!r} "
                            f"(not a field of {type(config).__name__})")
        setattr(config, key, value)
    with torch.device("meta"):
        model = cls(config, impl=impl, kernel_impl=kernel_impl)
    fresh = getattr(model, "fresh_on_load", ())
    state = match_state_dict(model, read_state_dict(directory), allow_missing=fresh)
    missing = [k for k in model.state_dict() if k not in state]
    model.load_state_dict(state, strict=False, assign=True)
    if missing:
        model.init_fresh(device=device or "cpu")
        warnings.warn(f"{cls.__name__}: {', '.join(missing)} not in the checkpoint at {directory}; initialized fresh "
                      f"(train them before use)", stacklevel=3)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}(-[0-9a-f]{8})?\.safetensors")
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size) -> int:
    """Bytes from an int or a string like "5GB" / "500MB" / "100KiB" (transformers' max_shard_size spellings)."""
    if isinstance(size, int) and size > 0:
        return size
    if isinstance(size, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)\s*", size.upper())
        if m:
            return int(float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"max_shard_size must be a positive int (bytes) or a string like '5GB' or '500MB', got {size!r}")


def _atomic_save_tensors(tensors: dict, path: str) -> None:
    from safetensors.torch import save_file

    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_pretrained(model, save_directory, *, max_shard_size=5 * 2**30) -> None:
    """`config.json` + `model.safetensors`, or shards + `model.safetensors.index.json` above `max_shard_size`.

    A crash at any point leaves either the previous checkpoint or the new one, never a mixture: a single file is
    renamed into place in one step; shards get names no earlier save used and the index, renamed into place last,
    is what makes them the checkpoint. Files of the previous checkpoint are removed only after that.
    """
    import json
    import uuid

    limit = parse_size(max_shard_size)
    os.makedirs(save_directory, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    shards, current, size = [], {}, 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[k], size = v, size + nbytes
    shards.append(current)
    index_path = os.path.join(save_directory, "model.safetensors.index.json")
    single_path = os.path.join(save_directory, "model.safetensors")
    old_shards = _indexed_files(index_path)
    if len(shards) == 1:
        _atomic_save_tensors(shards[0], single_path)
        stale = [index_path, *old_shards]
    else:
        tag = uuid.uuid4().hex[:8]
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}-{tag}.safetensors" for i in range(len(shards))]
        for name, shard in zip(names, shards):
            _atomic_save_tensors(shard, os.path.join(save_directory, name))
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                 "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
        if os.path.exists(single_path):  # readers prefer a single file over an index: retire it first
            os.remove(single_path)
        atomic_write_text(index_path, json.dumps(index, indent=2))
        stale = [f for f in old_shards if os.path.basename(f) not in names]
    keep = set(names) if len(shards) > 1 else set()
    # shards of earlier saves that crashed before their index was written
    stale += [os.path.join(save_directory, f) for f in os.listdir(save_directory)
              if _SHARD_NAME.fullmatch(f) and f not in keep]
    for path in stale:
        if os.path.exists(path):
            os.remove(path)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    atomic_write_text(os.path.join(save_directory, "config.json"), json.dumps(config, indent=2, sort_keys=True) + "\n")


def _indexed_files(index_path: str) -> list:
    import json

    try:
        with open(index_path) as f:
            names = set(json.load(f)["weight_map"].values())
    except (OSError, ValueError, KeyError):
        return []
    return [os.path.join(os.path.dirname(index_path), n) for n in sorted(names)]
