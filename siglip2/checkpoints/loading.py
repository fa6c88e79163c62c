"""Reading checkpoint files: resolve a directory or hub id, read config.json and (sharded) safetensors.

Hub ids go through huggingface_hub and fetch only config, safetensors, preprocessor and tokenizer files. What
comes out is files, tensors and config dicts: mapping them onto a model (key matching, dtype, fresh heads) is
siglip2/models/pretrained.py's job.

Saving (siglip2/checkpoints/saving.py) is crash-safe: at every instant of a save the directory loads as either
the previous checkpoint or the new one. A save commits its new files (written under
temp names) with a journal, `.save-journal.json`; the readers here follow it (`pending_save`, `checkpoint_file`),
so a save interrupted between its commit and its end still loads as the new checkpoint, and the next save into the
directory completes it. The promise holds for these readers: transformers does not read the journal, so it sees
a consistent directory except while a save is between its commit and its end (or stopped there, until the next
save). A shard index naming a file outside the directory is refused.
"""

from __future__ import annotations

import contextlib
import json
import os

HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model"]
CONFIG_NAME = "config.json"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
JOURNAL_NAME = ".save-journal.json"


class CheckpointError(OSError):
    """A checkpoint could not be found, read or matched to the model."""


def resolve_dir(name_or_path, *, revision=None, cache_dir=None, local_files_only=False) -> str:
    """Return a local directory holding the checkpoint `name_or_path` (a directory, or a hub id to download)."""
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(
            f"{path!r} is a file; expected a checkpoint directory (config.json + model.safetensors) or a hub id"
        )
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1 or os.sep in path.replace("/", "")
    if looks_local:
        raise CheckpointError(f"checkpoint directory {path!r} does not exist")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a runtime dependency
        raise CheckpointError("loading a hub id needs huggingface_hub; pass a local directory instead") from e
    try:
        return snapshot_download(
            path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, allow_patterns=HUB_PATTERNS
        )
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


def _plain_name(name, where: str) -> str:
    """A file name that stays inside the checkpoint directory (no absolute path, no `..`, no subfolder escape)."""
    if (
        not isinstance(name, str)
        or not name
        or os.path.isabs(name)
        or "\\" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise CheckpointError(
            f"{where}: file name {name!r} points outside the checkpoint directory; expected a "
            f"plain file name such as 'model-00001-of-00002.safetensors'"
        )
    return name


def _read_json_file(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the {what} ({e})") from e


def pending_save(directory: str) -> dict | None:
    """The journal of a save into `directory` that was interrupted after its commit point, or None."""
    path = os.path.join(directory, JOURNAL_NAME)
    try:
        j = _read_json_file(path, "save journal")
    except FileNotFoundError:
        return None
    files, remove = (j.get("files"), j.get("remove")) if isinstance(j, dict) else (None, None)
    if not isinstance(files, dict) or not isinstance(remove, list) or j.get("weights") not in (SINGLE_NAME, INDEX_NAME):
        raise CheckpointError(f"{path}: not a valid save journal (expected files, remove and weights entries)")
    for final, tmp in files.items():
        _plain_name(final, path)
        _plain_name(tmp, path)
    for name in remove:
        _plain_name(name, path)
    return j


def checkpoint_file(directory: str, name: str, journal: dict | None = None) -> str:
    """The path to read for `name`: the new file of an interrupted save when it is not yet renamed into place."""
    journal = pending_save(directory) if journal is None else journal
    if journal:
        tmp = journal["files"].get(name)
        if tmp and os.path.exists(os.path.join(directory, tmp)):
            return os.path.join(directory, tmp)
    return os.path.join(directory, name)


def read_json_object(path: str, *, required: bool = True, read_from: str | None = None, what: str = "") -> dict | None:
    """The JSON object in `path` (read from `read_from` when given, e.g. a file the save journal names). A missing
    file is a CheckpointError when `required`, else None; invalid JSON or a non-object is a CheckpointError naming
    `path` (`what` says what the object should hold)."""
    try:
        with open(read_from or path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError as e:
        if not required:
            return None
        raise CheckpointError(f"no {os.path.basename(path)} in {os.path.dirname(path)!r}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object{what}, got a {type(d).__name__}")
    return d


def read_config_json(directory: str) -> dict:
    """The config.json object of a checkpoint directory (through the save journal), as a dict."""
    path = os.path.join(directory, CONFIG_NAME)
    d = read_json_object(path, read_from=checkpoint_file(directory, CONFIG_NAME))
    assert d is not None  # required
    return d


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine. Where that cannot be told (Windows, where os.kill would end the
    process), True: a temp file is then kept rather than taken from a live writer."""
    if os.name == "nt" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temps(path: str) -> None:
    """Remove `<path>.tmp-<pid>` files (atomic_write_text's) left by writers killed mid-write: only those whose
    process is gone, so a live writer's file is never touched (the same machine is assumed, as for any pid). Best
    effort: a file that cannot be removed stays, and is ignored by every reader."""
    directory, base = os.path.split(path)
    prefix = base + ".tmp-"
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return
    for name in names:
        pid = name[len(prefix) :]
        if name.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))


def read_model_type(directory: str) -> str:
    """The `model_type` of `directory`'s config.json (through the save journal): a CheckpointError naming the file
    when it is missing, not a JSON object, or has no string model_type (a `{}` is a bad config, not a missing one)."""
    return config_model_type(read_config_json(directory), os.path.join(directory, CONFIG_NAME))


def config_model_type(d: dict, path: str) -> str:
    """`read_model_type` for a config.json dict already read from `path`."""
    mt = d.get("model_type")
    if not isinstance(mt, str) or not mt:
        got = f"model_type {mt!r}" if "model_type" in d else f"no 'model_type' field (keys: {sorted(d)[:8]})"
        raise CheckpointError(
            f"{path}: expected a 'model_type' field such as 'siglip2' or 'siglip' (the file transformers' or "
            f"siglip2's save_pretrained writes), got {got}"
        )
    return mt


def atomic_write_text(path: str, text: str) -> None:
    """Write through a temp file in the same directory (fsynced), then rename: a crash never leaves half a file.
    Temp files of earlier writers of `path` that were killed are removed first (`remove_stale_temps`)."""
    remove_stale_temps(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write_text(tmp, text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_safetensors(path: str, name: str | None = None) -> dict:
    from safetensors.torch import load_file

    name = name or path
    try:
        return load_file(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{name}: file not found") from e
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError on bad files
        raise CheckpointError(f"{name}: not a readable safetensors file, truncated or corrupt ({e})") from e


def read_index(directory: str, journal: dict | None = None) -> dict:
    """The weight_map of `model.safetensors.index.json`, checked: a dict of tensor name -> shard file name
    inside the directory."""
    path = os.path.join(directory, INDEX_NAME)
    try:
        index = _read_json_file(checkpoint_file(directory, INDEX_NAME, journal), "safetensors index")
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file not found") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"{path}: not a valid safetensors index (expected a JSON object with a 'weight_map' "
            f"object of tensor name -> shard file, got {type(index).__name__}"
            f"{'' if not isinstance(index, dict) else ' without one'})"
        )
    for key, shard in weight_map.items():
        _plain_name(shard, f"{path} (tensor {key!r})")
    return weight_map


def read_state_dict(directory: str) -> dict:
    """Tensors of `model.safetensors`, or of every shard listed in `model.safetensors.index.json`."""
    journal = pending_save(directory)
    if journal:
        weights = journal["weights"]
    elif os.path.exists(os.path.join(directory, SINGLE_NAME)):
        weights = SINGLE_NAME
    elif os.path.exists(os.path.join(directory, INDEX_NAME)):
        weights = INDEX_NAME
    else:
        raise CheckpointError(f"no {SINGLE_NAME} or {INDEX_NAME} in {directory!r}")
    if weights == SINGLE_NAME:
        return _read_safetensors(checkpoint_file(directory, SINGLE_NAME, journal), os.path.join(directory, SINGLE_NAME))
    weight_map = read_index(directory, journal)
    state, source = {}, {}
    for shard in sorted(set(weight_map.values())):
        tensors = _read_safetensors(checkpoint_file(directory, shard, journal), os.path.join(directory, shard))
        for key, t in tensors.items():
            if key in state and not _same_bits(state[key], t):
                # the later shard would silently win; which copy is meant cannot be told (the index may be stale)
                raise CheckpointError(
                    f"{os.path.join(directory, INDEX_NAME)}: tensor {key!r} is stored in two shards with different "
                    f"values: {source[key]} and {shard}; a checkpoint holds each tensor once (re-save it)"
                )
            state[key], source[key] = t, shard
    missing = set(weight_map) - set(state)
    if missing:
        raise CheckpointError(
            f"{os.path.join(directory, INDEX_NAME)}: tensors listed but absent from the shards: {sorted(missing)[:5]}"
        )
    return state


def _same_bits(a, b) -> bool:
    """Same dtype, shape and bytes (NaN payloads included, unlike torch.equal)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
    if a.dtype.is_floating_point or a.dtype.is_complex:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return bool(torch.equal(a, b))


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` and fsync it (no temp file: see `atomic_write_text`)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
