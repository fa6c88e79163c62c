"""Pieces of `siglip2 train`: model sizes and construction, the contrastive forward, DDP / FSDP2 wrapping,
activation checkpointing, the optimizer and schedule, crash-safe checkpoints, and the dry-run memory estimate.

Checkpoints: `OUT/checkpoint-<step>/model/` is a `save_pretrained` directory (+ tokenizer and preprocessor files,
so it is directly usable by `siglip2 classify`), and `OUT/checkpoint-<step>/state/` holds the optimizer, scheduler,
step, data position and every rank's RNG through torch.distributed.checkpoint (sharded under FSDP2). A checkpoint
is written under a temporary name, renamed into place when complete, and only then named by `OUT/latest`; a crash
at any point leaves the previous checkpoint as the one `--resume` reads.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import warnings

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoints.loading import atomic_write_text

# Random-init sizes (SigLIP2 shapes; vocab_size follows the tokenizer). "tiny" is for tests and smoke runs.
SIZES = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "patch_size": 4,
        "num_patches": 64,
    },
    "base": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "patch_size": 16,
        "num_patches": 256,
    },
    "large": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "patch_size": 16,
        "num_patches": 256,
    },
    "so400m": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "patch_size": 16,
        "num_patches": 256,
    },
}


def size_config(size: str, vocab_size: int):
    from ..models.configuration import Siglip2Config

    if size not in SIZES:
        raise ValueError(f"--model: {size!r} is neither a checkpoint directory nor a size ({', '.join(SIZES)})")
    s = dict(SIZES[size])
    vision = dict(s)
    text = {k: v for k, v in s.items() if k not in ("patch_size", "num_patches")}
    text.update(vocab_size=vocab_size, max_position_embeddings=64)
    return Siglip2Config(text_config=text, vision_config=vision)


class ImageEmbeddingCache:
    """Locked-image tuning's cache of the frozen vision tower's pooled embeddings, in CPU memory, keyed by
    (sample key, max_num_patches): preprocessing is deterministic, so an image seen again at the same budget (the
    next epoch) skips the vision tower. Only the missing images of a batch run through it. Entries keep the
    tower's output dtype; an embedding computed in a smaller or larger batch can differ from the uncached one in
    the last bits of floating point (matmul blocking), so a resumed run, whose cache starts empty, matches an
    uninterrupted one to that rounding rather than bit for bit."""

    def __init__(self):
        self.store: dict = {}
        self.hits = self.misses = 0

    def embed(self, vision, keys, pixel_values, pixel_attention_mask, spatial_shapes):
        miss = [i for i, k in enumerate(keys) if k not in self.store]
        if miss:
            idx = torch.tensor(miss, device=pixel_values.device)
            with torch.no_grad():
                out = vision(pixel_values[idx], pixel_attention_mask[idx], spatial_shapes[idx], return_dict=True)
            for i, e in zip(miss, out.pooler_output.detach().cpu()):
                self.store[keys[i]] = e
        self.misses += len(miss)
        self.hits += len(keys) - len(miss)
        return torch.stack([self.store[k] for k in keys]).to(pixel_values.device, non_blocking=True)


class ContrastiveForward(nn.Module):
    """The training forward: L2-normalized image and text embeddings plus logit scale and bias, all returned
    from forward so DDP / FSDP2 see every parameter used inside it. `lock_image` runs the vision tower frozen;
    with an `ImageEmbeddingCache` (`image_cache`) and the batch's `cache_keys`, it reads the tower's embeddings
    from the cache and runs the tower only on images missing there."""

    def __init__(self, model, lock_image: bool = False, image_cache: ImageEmbeddingCache | None = None):
        super().__init__()
        if image_cache is not None and not lock_image:
            raise ValueError("image_cache: caching image embeddings needs a frozen vision tower (lock_image=True)")
        self.model, self.lock_image, self.image_cache = model, lock_image, image_cache
        if lock_image:
            model.vision_model.requires_grad_(False)

    def forward(self, input_ids, attention_mask, pixel_values, pixel_attention_mask, spatial_shapes, cache_keys=None):
        m = self.model
        text = m.text_model(input_ids, attention_mask, return_dict=True).pooler_output
        if self.image_cache is not None and cache_keys is not None:
            image = self.image_cache.embed(
                m.vision_model, cache_keys, pixel_values, pixel_attention_mask, spatial_shapes
            )
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.lock_image):
                out = m.vision_model(pixel_values, pixel_attention_mask, spatial_shapes, return_dict=True)
                image = out.pooler_output
        if image.dtype != text.dtype:  # autocast can leave one tower in fp32
            image, text = image.float(), text.float()
        return (
            image / image.norm(p=2, dim=-1, keepdim=True),
            text / text.norm(p=2, dim=-1, keepdim=True),
            m.logit_scale,
            m.logit_bias,
        )


def _checkpointed(forward, *args):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, *args, use_reentrant=False)


def encoder_layers(model):
    from ..models.layers import Siglip2EncoderLayer

    return [m for m in model.modules() if isinstance(m, Siglip2EncoderLayer)]


def apply_activation_checkpointing(model) -> int:
    """Recompute each Siglip2EncoderLayer in backward (torch.utils.checkpoint, non-reentrant). The layer's forward
    is wrapped per instance, so module names, state-dict keys and FSDP2 units are unchanged."""
    layers = encoder_layers(model)
    for layer in layers:
        # an instance attribute shadows the class's method (pyright cannot model that assignment)
        layer.forward = functools.partial(_checkpointed, layer.forward)  # pyright: ignore[reportAttributeAccessIssue]
    return len(layers)


def wrap(module, *, fsdp: bool, precision: str, device):
    """DDP (the default under torchrun) or FSDP2: fully_shard per Siglip2EncoderLayer, then the root, with bf16
    params and fp32 gradient reduction under --precision bf16. One process: the module itself."""
    if not (dist.is_available() and dist.is_initialized()) or (dist.get_world_size() == 1 and not fsdp):
        return module
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if precision == "bf16"
            else MixedPrecisionPolicy()
        )
        for layer in encoder_layers(module):
            fully_shard(layer, mp_policy=mp)
        fully_shard(module, mp_policy=mp)
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids)


def param_groups(module, weight_decay: float):
    """AdamW groups: no weight decay on norms, biases, logit_scale / logit_bias (every tensor with ndim < 2)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or name.endswith(".bias") or "logit_scale" in name or "logit_bias" in name or "norm" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `min_ratio` of the peak at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


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


def save_checkpoint(out_dir, step, module, base_model, optimizer, scheduler, extra, processor_files, keep_last):
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


def latest_checkpoint(out_dir) -> str | None:
    try:
        with open(os.path.join(out_dir, "latest")) as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    path = os.path.join(out_dir, name)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume: {out_dir}/latest names {name!r}, which does not exist")
    return path


def load_training_state(path, module, optimizer, scheduler) -> dict:
    """Restore optimizer, scheduler and this rank's RNG from `path/state`; returns the saved `extra` dict."""
    import torch.distributed.checkpoint.state_dict_loader as dcp_loader
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    rank = _rank()
    state = {
        "optim": get_optimizer_state_dict(module, optimizer),
        "scheduler": scheduler.state_dict(),
        "extra": dict.fromkeys(EXTRA_KEYS, 0),
        f"rng_rank{rank}": _rng_state(),
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp_loader.load(state, checkpoint_id=os.path.join(path, "state"))
    set_optimizer_state_dict(module, optimizer, optim_state_dict=state["optim"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state[f"rng_rank{rank}"])
    return state["extra"]


def trim_log(path, step) -> None:
    """Drop log.jsonl lines past the resumed step (they belong to the run that crashed after its last save)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(keep))


# ----------------------------------------------------------------------------------------------
# Dry-run plan
# ----------------------------------------------------------------------------------------------


def activation_bytes(cfg, tokens: int, elem: int, checkpointing: bool) -> int:
    """Estimated bytes saved for backward by one tower's encoder for `tokens` valid tokens.

    Per layer and token, backward keeps: the two LayerNorm inputs and outputs (4 D), q, k, v (3 D), the attention
    output (D), fc1's output and the GELU output (2 I), in the compute dtype, plus fp32 LayerNorm statistics (2 x 2)
    and the attention log-sum-exp (H). With checkpointing only each layer's input (D) is kept, plus one layer's
    full set while it is recomputed. Embeddings, heads and the loss are small next to this and not counted.
    """
    D, inter, H, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_hidden_layers
    per_layer = tokens * ((8 * D + 2 * inter) * elem + 4 * (4 + H))
    if checkpointing:
        return n * tokens * D * elem + per_layer
    return n * per_layer
