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
        raise CheckpointError(
            f"could not get {path!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            f"It is neither a local directory nor in the hub cache (or the network is unreachable); "
            f"pass a local directory that holds config.json and model.safetensors"
        ) from e
