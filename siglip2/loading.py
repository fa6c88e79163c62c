"""Checkpoint files: resolve a directory or hub id, read (sharded) safetensors, strict key check, atomic save.

Hub ids go through huggingface_hub and fetch only config, safetensors, preprocessor and tokenizer files.
"""
from __future__ import annotations

import os

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


def match_state_dict(model, state: dict) -> dict:
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
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if prefix:  # the other tower of a full checkpoint is expected to be left over
        other = "text_model." if prefix == "vision_model." else "vision_model."
        unexpected = [k for k in unexpected if not k.startswith(other) and k not in ("logit_scale", "logit_bias")]
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
    return {k: state[k] for k in expected}


def load_pretrained(cls, name_or_path, *, revision=None, dtype=None, device=None, cache_dir=None,
                    local_files_only=False, **model_kwargs):
    """`cls.from_pretrained`: config + strict weights from a directory or hub id."""
    import torch

    directory = resolve_dir(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    config = cls.config_class.from_pretrained(directory)
    with torch.device("meta"):
        model = cls(config, **model_kwargs)
    state = match_state_dict(model, read_state_dict(directory))
    model.load_state_dict(state, strict=True, assign=True)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def save_pretrained(model, save_directory, *, max_shard_size: int = 5 * 2**30) -> None:
    """`config.json` + `model.safetensors` (sharded with an index above `max_shard_size` bytes), each written to a
    temp file and renamed into place, the config last, so a crash never leaves a checkpoint that looks complete."""
    import json

    from safetensors.torch import save_file

    os.makedirs(save_directory, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    shards, current, size = [], {}, 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if current and size + nbytes > max_shard_size:
            shards.append(current)
            current, size = {}, 0
        current[k], size = v, size + nbytes
    shards.append(current)
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        path = os.path.join(save_directory, name)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            save_file(shard, tmp, metadata={"format": "pt"})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    stale = [os.path.join(save_directory, "model.safetensors.index.json")] if len(shards) == 1 else \
        [os.path.join(save_directory, "model.safetensors")]
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                 "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
        atomic_write_text(os.path.join(save_directory, "model.safetensors.index.json"), json.dumps(index, indent=2))
    for path in stale:
        if os.path.exists(path):
            os.remove(path)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    atomic_write_text(os.path.join(save_directory, "config.json"), json.dumps(config, indent=2, sort_keys=True) + "\n")
