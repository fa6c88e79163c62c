"""Crash-safe training checkpoints and exact resume for `siglip2 train`.

`OUT/checkpoint-<step>/model/` is a `save_pretrained` directory (+ tokenizer and preprocessor files, so it is
directly usable by `siglip2 classify`), and `OUT/checkpoint-<step>/state/` holds the optimizer, scheduler, step,
data position and every rank's RNG through torch.distributed.checkpoint (sharded under FSDP2). A checkpoint is
written under a temporary name, renamed into place when complete, and only then named by `OUT/latest`; a crash
at any point leaves the previous checkpoint as the one `--resume` reads (without `latest`, the newest
`checkpoint-*`: only complete ones are ever renamed into place). Each checkpoint also records the run's arguments
(`train_args.json`), which a resume must repeat. A damaged checkpoint (a missing or unreadable file, a `latest`
naming no checkpoint folder) is a ValueError naming the file; nothing is deleted to recover from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings

import torch
import torch.distributed as dist

from ..checkpoints.loading import atomic_write_text


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rng_state() -> dict:
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_model_state(module) -> dict:
    """The unsharded fp32 state dict of the wrapped training module (collective under FSDP2), keys of the model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}


EXTRA_KEYS = ("step", "cursor", "consumed", "world_size")


RUN_ARGS = "train_args.json"  # the arguments a resume must repeat (loop.RESUME_FIXED)


def save_checkpoint(
    out_dir, step, module, base_model, optimizer, scheduler, extra, processor_files, keep_last, run_args=None
):
    """Write OUT/checkpoint-<step> crash-safely (see the module docstring); every rank must call it."""
    import torch.distributed.checkpoint.state_dict_saver as dcp_saver
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    name = f"checkpoint-{step:08d}"
    final, tmp = os.path.join(out_dir, name), os.path.join(out_dir, f".tmp-{name}")
    rank = _rank()
    model_sd = full_model_state(module)
    if rank == 0:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        _save_model(base_model, model_sd, os.path.join(tmp, "model"), processor_files)
        if run_args is not None:
            atomic_write_text(os.path.join(tmp, RUN_ARGS), json.dumps(run_args, indent=2, sort_keys=True) + "\n")
    _barrier()
    state = {
        "optim": get_optimizer_state_dict(module, optimizer),
        "scheduler": scheduler.state_dict(),
        "extra": {k: int(extra[k]) for k in EXTRA_KEYS},
        f"rng_rank{rank}": _rng_state(),
    }
    with warnings.catch_warnings():  # one process: DCP says it assumes so
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp_saver.save(state, checkpoint_id=os.path.join(tmp, "state"))
    _barrier()
    if rank == 0:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(os.path.join(out_dir, "latest"), name + "\n")
        old = sorted(d for d in os.listdir(out_dir) if d.startswith("checkpoint-") and d != name)
        for d in old[: max(0, len(old) - (keep_last - 1))] if keep_last > 0 else []:
            shutil.rmtree(os.path.join(out_dir, d), ignore_errors=True)
    _barrier()
    return final


def _save_model(base_model, state, directory, processor_files):
    """save_pretrained of the full state (a meta copy of the model takes the gathered tensors without copying)."""
    with torch.device("meta"):
        shell = type(base_model)(base_model.config)
    shell.load_state_dict(state, assign=True, strict=True)
    shell.save_pretrained(directory)
    for src in processor_files:
        if hasattr(src, "save_pretrained"):
            src.save_pretrained(directory)
        else:
            shutil.copy2(src, os.path.join(directory, os.path.basename(src)))


_NAME = re.compile(r"checkpoint-\d{8,}")


def latest_checkpoint(out_dir) -> str | None:
    """The checkpoint OUT/latest names; without `latest` (a crash after a checkpoint was renamed into place but
    before `latest` was written), the newest OUT/checkpoint-* (only complete ones are ever renamed into place);
    None when there is none. A `latest` that names no checkpoint folder beside it is a ValueError naming it."""
    latest = os.path.join(out_dir, "latest")
    try:
        with open(latest, encoding="utf-8") as f:
            name = f.read().strip()
    except FileNotFoundError:
        names = sorted(d for d in os.listdir(out_dir) if _NAME.fullmatch(d)) if os.path.isdir(out_dir) else []
        return os.path.join(out_dir, names[-1]) if names else None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--resume: cannot read {latest} ({e})") from None
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"--resume: {latest} should name a checkpoint-NNNNNNNN folder beside it, got {name[:80]!r}; "
            "delete it to resume from the newest checkpoint-* folder"
        )
    path = os.path.join(out_dir, name)
    if not os.path.isdir(path):
        raise ValueError(f"--resume: {latest} names {name!r}, which does not exist")
    return path


def check_checkpoint(path) -> None:
    """Refuse a checkpoint folder without the files a resume reads, naming the first one missing."""
    for rel in ("model/config.json", "state/.metadata"):
        if not os.path.isfile(os.path.join(path, rel)):
            raise ValueError(f"--resume: {os.path.join(path, rel)} is missing: the checkpoint {path} is damaged")


def read_run_args(path) -> dict | None:
    """The arguments recorded in a checkpoint (None for one written before they were recorded)."""
    f = os.path.join(path, RUN_ARGS)
    if not os.path.exists(f):
        return None
    try:
        with open(f, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as e:
        raise ValueError(f"--resume: cannot read {f} ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--resume: {f}: expected a JSON object, got {type(data).__name__}")
    return data


def load_training_state(path, module, optimizer, scheduler) -> dict:
    """Restore optimizer, scheduler and this rank's RNG from `path/state`; returns the saved `extra` dict."""
    import torch.distributed.checkpoint.state_dict_loader as dcp_loader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    rank = _rank()
    state = {
        "optim": get_optimizer_state_dict(module, optimizer),
        "scheduler": scheduler.state_dict(),
        "extra": dict.fromkeys(EXTRA_KEYS, 0),
        f"rng_rank{rank}": _rng_state(),
    }
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp_loader.load(state, checkpoint_id=os.path.join(path, "state"))
        set_optimizer_state_dict(module, optimizer, optim_state_dict=state["optim"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state[f"rng_rank{rank}"])
    except (Exception, CheckpointException) as e:  # DCP's (a BaseException) carries every rank's traceback: keep
        # its last line and name the folder
        lines = [line for line in str(e).splitlines() if line.strip()]
        why = lines[-1].strip() if lines else type(e).__name__
        raise ValueError(
            f"--resume: {os.path.join(path, 'state')}: the training state cannot be read ({type(e).__name__}: "
            f"{why[:300]}); the checkpoint is damaged: delete it (and OUT/latest) to resume from an older one"
        ) from None
    return state["extra"]


def trim_log(path, step) -> None:
    """Drop log.jsonl lines past the resumed step (they belong to the run that crashed after its last save)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(keep))
