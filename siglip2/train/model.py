"""The model side of `siglip2 train`: random-init sizes, the contrastive forward (with the locked-image
embedding cache), DDP / FSDP2 wrapping, activation checkpointing, the optimizer's parameter groups and schedule,
and the dry-run plan with its activation-memory estimate. Checkpoints and resume: checkpointing.py.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist
from torch import nn

from .data import TEXT_TOKENS

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


def dry_run(cfg, model, plan, world, total) -> dict:
    """Print the plan of a run (parameters, batch per bucket, estimated activation memory); returns it."""
    n_params = sum(p.numel() for p in model.parameters())
    vis = model.vision_model.parameters()
    trainable = n_params - (sum(p.numel() for p in vis) if cfg.lock_image else 0)
    elem = 2 if cfg.precision == "bf16" else 4
    rows = []
    for m in plan.seq_lens:
        n = plan.bucket_batch(m)
        vt, tt = n * m, n * TEXT_TOKENS
        act = {
            ck: activation_bytes(model.config.vision_config, vt, elem, ck) * (not cfg.lock_image)
            + activation_bytes(model.config.text_config, tt, elem, ck)
            for ck in (False, True)
        }
        rows.append(
            {
                "max_num_patches": m,
                "batch_per_rank": n,
                "global_batch": n * world,
                "image_tokens_per_rank": vt,
                "text_tokens_per_rank": tt,
                "activations_gb": act[False] / 2**30,
                "activations_gb_checkpointed": act[True] / 2**30,
            }
        )
    summary = {
        "parameters": n_params,
        "trainable_parameters": trainable,
        "world_size": world,
        "steps": total,
        "precision": cfg.precision,
        "buckets": rows,
    }
    print(
        f"plan: {n_params / 1e6:.1f}M parameters ({trainable / 1e6:.1f}M trainable), {world} rank(s), "
        f"{total} steps, {cfg.precision}{', mixed budgets' if cfg.mixed_budgets else ''}"
    )
    print("max_num_patches  batch/rank  global  image tok/rank  text tok/rank  act GB  act GB (ckpt)")
    for r in rows:
        print(
            f"{r['max_num_patches']:>15}  {r['batch_per_rank']:>10}  {r['global_batch']:>6}  "
            f"{r['image_tokens_per_rank']:>14}  {r['text_tokens_per_rank']:>13}  {r['activations_gb']:>6.2f}  "
            f"{r['activations_gb_checkpointed']:>13.2f}"
        )
    print(
        "(activations: estimated bytes the encoders keep for backward, per rank; weights, optimizer state and "
        "the loss are not included)"
    )
    return summary
