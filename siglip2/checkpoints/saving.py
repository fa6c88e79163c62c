"""Crash-safe checkpoint writes: at every instant the directory loads as the previous checkpoint or the new one.

`write_checkpoint(directory, state, config_text)` takes what the model side (siglip2/models/pretrained.py)
prepared: the tensors and the config.json text. The protocol (readers in loading.py follow it):
1. Everything that can fail before the directory is touched is done first: the model side serializes config.json
   (and checks that it reads back) and the state dict (no meta tensors); here the state dict is split by
   huggingface_hub's `split_torch_state_dict_into_shards`.
2. Every new file is written under a temporary name `<final>.tmp-<tag>` and fsynced. Shards get names no earlier
   save used (`model-00001-of-00003-<tag>.safetensors`), so a new shard never overwrites one the old index lists.
3. One journal, `.save-journal.json` (temp file + fsync + rename), commits the new set: it maps each final name to
   its temp file and lists the old files to remove (the old single file or index and shards, leftovers of earlier
   interrupted saves). Readers that find a journal read the new set through it: a file not yet renamed is read
   under its temp name, and the weights format (single file or index) comes from the journal, not from which
   files exist.
4. The temp files are renamed into place, the old files removed, then the journal (each step fsynced). A save
   interrupted here is completed by the next save into the directory (or `finish_pending_save`).
A save that fails before its commit removes its temp files (best effort); leftovers are ignored by readers and
removed by the next save. transformers, which does not read the journal, sees a consistent checkpoint whenever no
save is in flight or stopped between its commit and its end.

One save at a time per directory: every write here holds an OS lock (`fcntl.flock`, non-blocking; `msvcrt.locking`
on Windows) on `.save.lock` in the directory, and a second save (another process, or another thread) is refused
with "another save is in progress" instead of racing on the journal and the temp files. The OS releases the lock
when its holder exits or is killed, so no stale lock outlives a writer; the file is removed when the save ends
(POSIX). On a file system without locks (ENOLCK, EOPNOTSUPP) saves go on unlocked, as before. Under the lock every
checkpoint temp file in the directory is a leftover of a dead save, so the save removes them all; other
`*.tmp-<pid>` files go only once their process is gone (loading.remove_stale_temps).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from typing import TYPE_CHECKING

from .loading import (
    CONFIG_NAME,
    INDEX_NAME,
    JOURNAL_NAME,
    SINGLE_NAME,
    CheckpointError,
    atomic_write_text,
    pending_save,
    read_index,
    write_text,
)

if TYPE_CHECKING:
    import torch

_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}(-[0-9a-f]{8})?\.safetensors")
# temp files of interrupted saves: "<final name>.tmp-<8 hex>" (saves) or ".tmp-<pid>" (atomic_write_text)
_TMP_NAME = re.compile(
    r"(config\.json|model[-.0-9a-zA-Z]*\.safetensors(\.index\.json)?|\.save-journal\.json)"
    r"\.tmp-[0-9a-f]+"
)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: object) -> int:
    """Bytes from an int or a string like "5GB" / "500MB" / "100KiB" (transformers' max_shard_size spellings)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    if isinstance(size, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)\s*", size.upper())
        if m and int(float(m.group(1)) * _UNITS[m.group(2)]) > 0:
            return int(float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"max_shard_size must be a positive int (bytes) or a string like '5GB' or '500MB', got {size!r}")


def _make_dir(save_directory: str | os.PathLike) -> str:
    directory = os.fspath(save_directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"save_directory: expected a directory, got {directory!r}, which is a file")
    os.makedirs(directory, exist_ok=True)
    return directory


def _fsync_path(path: str) -> None:
    """fsync a file or (POSIX) a directory, so renames and removals in it survive a power loss."""
    if os.name == "nt" and os.path.isdir(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


LOCK_NAME = ".save.lock"
_NO_LOCKS = {getattr(errno, n) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS") if hasattr(errno, n)}


class SaveInProgressError(CheckpointError):
    """Another save into the same directory holds its lock."""


@contextlib.contextmanager
def save_lock(directory: str):
    """Hold `directory`'s save lock for the block, or raise SaveInProgressError at once (never waits)."""
    path = os.path.join(directory, LOCK_NAME)
    busy = SaveInProgressError(
        f"{directory}: another save is in progress (it holds {LOCK_NAME}); wait for it to end, or save elsewhere"
    )
    # each os.open is its own open file description, and flock locks those: threads of one process exclude
    # each other too
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except (IsADirectoryError, PermissionError) as e:
            raise CheckpointError(f"{path}: cannot open the save lock file ({e.strerror}); remove it") from e
        try:
            _os_lock(fd)
        except OSError as e:
            if e.errno in _NO_LOCKS:  # a file system without locks (some FUSE / network mounts): save unlocked
                break
            os.close(fd)
            raise busy from None
        try:  # the holder before us may have removed the file after we opened it: lock the file now there
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            if os.name != "nt":  # removed while held, so one that opened it before retries (the samestat check)
                with contextlib.suppress(OSError):
                    os.remove(path)
        finally:
            os.close(fd)  # releases the OS lock, whatever happened above


def _os_lock(fd: int) -> None:
    if os.name == "nt":
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _save_tensors(tensors: dict, path: str) -> None:
    from safetensors.torch import save_file

    save_file(tensors, path, metadata={"format": "pt"})
    _fsync_path(path)


def _current_files(directory: str) -> set:
    """Names of the checkpoint files now in `directory`, and leftovers of earlier interrupted saves."""
    names = set(os.listdir(directory))
    out = {n for n in names if _SHARD_NAME.fullmatch(n) or _TMP_NAME.fullmatch(n)}
    out |= {n for n in (SINGLE_NAME, INDEX_NAME) if n in names}
    if INDEX_NAME in names:
        with contextlib.suppress(CheckpointError):  # an unreadable index: its shards are not removed (not ours?)
            out |= set(read_index(directory, journal={}).values())
    return out & names


def finish_pending_save(directory: str) -> None:
    """Complete a save into `directory` that was interrupted after its commit (renames, then removals)."""
    journal = pending_save(directory)
    if journal is None:
        return
    for final, tmp in journal["files"].items():
        if os.path.exists(os.path.join(directory, tmp)):
            os.replace(os.path.join(directory, tmp), os.path.join(directory, final))
    _fsync_path(directory)
    for name in journal["remove"]:
        if name not in journal["files"] and os.path.exists(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))
    _fsync_path(directory)
    os.remove(os.path.join(directory, JOURNAL_NAME))
    _fsync_path(directory)


def save_config_json(save_directory: str | os.PathLike, text: str) -> None:
    """Write config.json alone (a config's `save_pretrained`), atomically, after completing an interrupted save
    (whose journal would otherwise shadow the new file)."""
    directory = _make_dir(save_directory)
    with save_lock(directory):
        finish_pending_save(directory)
        atomic_write_text(os.path.join(directory, CONFIG_NAME), text)


def write_checkpoint(
    save_directory: str | os.PathLike,
    state: dict[str, torch.Tensor],
    config_text: str,
    *,
    max_shard_size: int | str = 5 * 2**30,
) -> None:
    """`config.json` (the text given) + `model.safetensors`, or shards + `model.safetensors.index.json` above
    `max_shard_size` (split by huggingface_hub's `split_torch_state_dict_into_shards`). `state`: contiguous CPU
    tensors. Crash-safe, see the module docstring: an interruption at any point leaves a directory that loads as
    the previous checkpoint or the new one."""
    import uuid

    from huggingface_hub import split_torch_state_dict_into_shards

    # 1. what can still fail before the directory is touched
    limit = parse_size(max_shard_size)
    split = split_torch_state_dict_into_shards(state, max_shard_size=limit)
    tag = uuid.uuid4().hex[:8]
    if split.is_sharded:  # shard names no earlier save used: a new shard never overwrites one the old index lists
        rename = {n: n[: -len(".safetensors")] + f"-{tag}.safetensors" for n in split.filename_to_tensors}
        shards = {rename[n]: {k: state[k] for k in keys} for n, keys in split.filename_to_tensors.items()}
        index = {
            "metadata": dict(split.metadata),
            "weight_map": {k: rename[n] for k, n in split.tensor_to_filename.items()},
        }
        texts, weights = {INDEX_NAME: json.dumps(index, indent=2, sort_keys=True) + "\n"}, INDEX_NAME
    else:
        shards, texts, weights = {SINGLE_NAME: state}, {}, SINGLE_NAME
    texts[CONFIG_NAME] = config_text
    files = {name: f"{name}.tmp-{tag}" for name in [*shards, *texts]}

    # 2. the directory: finish an interrupted save (it is the current checkpoint), write the new set under temp names
    directory = _make_dir(save_directory)
    with save_lock(directory):
        _write_locked(directory, shards, texts, files, weights, tag)


def _write_locked(directory: str, shards: dict, texts: dict, files: dict, weights: str, tag: str) -> None:
    finish_pending_save(directory)
    stale = sorted(_current_files(directory) - set(files))
    try:
        for name, tensors in shards.items():
            _save_tensors(tensors, os.path.join(directory, files[name]))
        for name, text in texts.items():
            write_text(os.path.join(directory, files[name]), text)
        _fsync_path(directory)
        journal = {"files": files, "remove": stale, "weights": weights}
        tmp = os.path.join(directory, f"{JOURNAL_NAME}.tmp-{tag}")
        write_text(tmp, json.dumps(journal, indent=2) + "\n")
        os.replace(tmp, os.path.join(directory, JOURNAL_NAME))  # the commit point
    except BaseException:
        for name in [*files.values(), f"{JOURNAL_NAME}.tmp-{tag}"]:
            try:
                if os.path.exists(os.path.join(directory, name)):
                    os.remove(os.path.join(directory, name))
            except OSError:
                pass  # best effort: leftovers are ignored by readers and removed by the next save
        raise
    # 3. swap in, remove the old files, drop the journal; an interruption here is completed by the next save
    finish_pending_save(directory)
