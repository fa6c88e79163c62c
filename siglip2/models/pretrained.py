"""The base of every model class: config, impl selection, transformers' init, from_pretrained / save_pretrained.

This is where a model meets its checkpoint files. siglip2.checkpoints reads and writes files, tensors and config
dicts; here they are mapped onto a model: the config class reads config.json, the state dict's keys are matched to
the model (standalone towers with or without their prefix, a full checkpoint into one tower, a classifier head that
starts fresh), `dtype="auto"` follows config.json, and a model becomes the config.json text and the CPU tensors
that `siglip2.checkpoints.saving.write_checkpoint` commits crash-safe.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..checkpoints.loading import CheckpointError, read_state_dict, resolve_dir
from ..checkpoints.saving import parse_size, write_checkpoint
from .configuration import BaseConfig, ConfigLike, Siglip2Config, config_from_any
from .layers import (
    Siglip2Attention,
    Siglip2MLP,
    Siglip2MultiheadAttentionPoolingHead,
    Siglip2TextEmbeddings,
    Siglip2VisionEmbeddings,
    SiglipVisionEmbeddings,
)

if TYPE_CHECKING:
    from typing_extensions import Self

IMPLS = ("reference", "triton")


class Siglip2PreTrainedModel(nn.Module):
    """Shared plumbing: config, impl selection, from_pretrained/save_pretrained, transformers-like init."""

    config_class: type[BaseConfig] = Siglip2Config
    config: Any  # an instance of `config_class`; each model class declares its exact config type
    default_impl = "reference"
    checkpoint_prefix: str | None = None

    def __init__(self, config: ConfigLike, *, impl: str | None = None, kernel_impl: str = "auto") -> None:
        super().__init__()
        self.config = config_from_any(config, self.config_class)
        self.impl, self.kernel_impl = "reference", "auto"
        self._pending_impl = (impl or self.default_impl, kernel_impl)

    def _finish_init(self) -> None:
        self.set_impl(*self._pending_impl)
        if not any(p.is_meta for p in self.parameters()):
            self.apply(self._init_weights)

    @torch.no_grad()
    def _init_weights(self, m: nn.Module) -> None:
        """transformers' initialisation of one submodule (`_finish_init` applies it to every module of a fresh
        model), so randomly initialised models train like upstream ones; a model with parameters of its own
        extends it."""
        if isinstance(m, Siglip2VisionEmbeddings | SiglipVisionEmbeddings):
            nn.init.normal_(m.position_embedding.weight, std=m.position_embedding.weight.shape[1] ** -0.5)
        elif isinstance(m, Siglip2Attention):
            for p in (m.q_proj, m.k_proj, m.v_proj, m.out_proj):
                nn.init.xavier_uniform_(p.weight)
                nn.init.zeros_(p.bias)
        elif isinstance(m, Siglip2MLP):
            for p in (m.fc1, m.fc2):
                nn.init.xavier_uniform_(p.weight)
                nn.init.normal_(p.bias, std=1e-6)
        elif isinstance(m, Siglip2MultiheadAttentionPoolingHead):
            nn.init.xavier_uniform_(m.probe)
            nn.init.xavier_uniform_(m.attention.in_proj_weight)
            nn.init.zeros_(m.attention.in_proj_bias)
        elif isinstance(m, Siglip2TextEmbeddings):
            nn.init.normal_(m.token_embedding.weight, std=m.token_embedding.weight.shape[1] ** -0.5)

    def set_impl(self, impl: str, kernel_impl: str = "auto") -> Self:
        """impl: "reference" | "triton"; kernel_impl: the `impl` the triton path passes to siglip2.kernels."""
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        for m in self.modules():
            if isinstance(m, Siglip2PreTrainedModel):
                m.impl, m.kernel_impl = impl, kernel_impl
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> Self:
        """Load from a directory or hub id (config.json + model.safetensors, or a sharded index)."""
        return load_pretrained(
            cls,
            name_or_path,
            revision=revision,
            dtype=dtype,
            device=device,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            **kwargs,
        )

    def save_pretrained(self, save_directory: str | os.PathLike, max_shard_size: int | str = 5 * 2**30) -> None:
        """Crash-safe: config.json + model.safetensors (or shards + index), see siglip2/checkpoints/saving.py."""
        save_pretrained(self, save_directory, max_shard_size=max_shard_size)

    @property
    def _kernels(self) -> str | None:
        """The `kernel_impl` the blocks get: None runs transformers' eager math (impl "reference")."""
        return None if self.impl == "reference" else self.kernel_impl

    def _flags(
        self, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None, kwargs: dict
    ) -> tuple[bool, bool, bool]:
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward got unexpected keyword arguments: {sorted(kwargs)}")
        c = self.config
        return (
            c.output_attentions if output_attentions is None else output_attentions,
            c.output_hidden_states if output_hidden_states is None else output_hidden_states,
            c.return_dict if return_dict is None else return_dict,
        )


# ----------------------------------------------------------------------------------------------
# Checkpoint files -> a model
# ----------------------------------------------------------------------------------------------


def match_state_dict(model, state: dict, allow_missing=()) -> dict:
    """Adapt a checkpoint's keys to `model` (standalone towers with/without prefix, full-model checkpoints into a
    tower, Conv2d patch weights) and raise one readable report of missing, unexpected and wrong-shape keys."""
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    prefix = getattr(model, "checkpoint_prefix", None)  # "vision_model." / "text_model." for standalone towers
    if prefix and not any(k in expected for k in state):
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
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
    wrong = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        lines = [f"checkpoint does not match {type(model).__name__}:"]
        if missing:
            lines.append(
                f"  missing keys ({len(missing)}): {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else "")
            )
        if unexpected:
            lines.append(
                f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:10])}"
                + (" ..." if len(unexpected) > 10 else "")
            )
        for k, got, want in wrong[:10]:
            lines.append(f"  wrong shape for {k}: checkpoint {got}, model {want}")
        raise CheckpointError("\n".join(lines))
    return {k: state[k] for k in expected if k in state}


def resolve_dtype(dtype, config=None):
    """`from_pretrained`'s dtype: None (as stored), a torch dtype, a name ("bfloat16", "torch.float16") or "auto"
    (config.json's dtype, as transformers reads it; the stored dtype when the config records none)."""
    import torch

    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    if isinstance(dtype, str):
        name = dtype
        if dtype == "auto":
            name = getattr(config, "dtype", None)
            if name is None:
                return None
            if isinstance(name, torch.dtype):
                return name
        t = getattr(torch, str(name).removeprefix("torch."), None)
        if isinstance(t, torch.dtype) and t.is_floating_point:
            return t
        if dtype == "auto":
            raise CheckpointError(f"config.json records dtype {name!r}, which is not a floating torch dtype")
    raise ValueError(
        f"dtype: expected None, 'auto', a floating torch.dtype or its name ('float32', 'bfloat16', "
        f"'float16'), got {dtype!r}"
    )


def load_pretrained(
    cls,
    name_or_path,
    *,
    revision=None,
    dtype=None,
    device=None,
    cache_dir=None,
    local_files_only=False,
    impl=None,
    kernel_impl="auto",
    **config_overrides,
):
    """`cls.from_pretrained`: config + strict weights from a directory or hub id.

    Extra keywords override config fields (e.g. `num_labels=10` for a fresh classifier). Only a classification
    head missing from the checkpoint (fine-tuning from a Siglip2Model checkpoint) is initialized instead of loaded,
    with a warning; any other mismatch raises a CheckpointError.
    """
    import warnings

    import torch

    if dtype is not None and dtype != "auto":
        resolve_dtype(dtype)  # a bad dtype is refused before anything is read
    directory = resolve_dir(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    config = cls.config_class.from_pretrained(directory)
    for key, value in config_overrides.items():
        if key != "num_labels" and not hasattr(config, key):
            raise TypeError(
                f"{cls.__name__}.from_pretrained got an unexpected keyword argument {key!r} "
                f"(not a field of {type(config).__name__})"
            )
        setattr(config, key, value)
    if config_overrides and hasattr(config, "validate"):
        config.validate()
    dtype = resolve_dtype(dtype, config)
    with torch.device("meta"):
        model = cls(config, impl=impl, kernel_impl=kernel_impl)
    fresh = getattr(model, "fresh_on_load", ())
    state = match_state_dict(model, read_state_dict(directory), allow_missing=fresh)
    missing = [k for k in model.state_dict() if k not in state]
    model.load_state_dict(state, strict=False, assign=True)
    if missing:
        model.init_fresh(device=device or "cpu")
        warnings.warn(
            f"{cls.__name__}: {', '.join(missing)} not in the checkpoint at {directory}; initialized fresh "
            f"(train them before use)",
            stacklevel=3,
        )
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# A model -> checkpoint files
# ----------------------------------------------------------------------------------------------


def _find_unserializable(d: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The dotted key of the first value json cannot write (for an error that names the field)."""
    if isinstance(d, dict):
        for k, v in d.items():
            found = _find_unserializable(v, (*path, str(k)))
            if found:
                return found
        return None
    if isinstance(d, (list, tuple)):
        for i, v in enumerate(d):
            found = _find_unserializable(v, (*path, str(i)))
            if found:
                return found
        return None
    try:
        json.dumps(d)
    except (TypeError, ValueError):
        return path or ("?",)
    return None


def config_json(model: Siglip2PreTrainedModel) -> str:
    """config.json text for `model`: the config as transformers writes it (torch dtypes as "float32"), with
    `architectures` and the dtype of the saved weights; checked by reading it back into the config class."""
    config = model.config
    d = config.to_dict()
    d["architectures"] = [type(model).__name__]
    weight_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if weight_dtype is not None:
        d["dtype"] = str(weight_dtype).removeprefix("torch.")  # as transformers 5 records it
    bad = _find_unserializable(d)
    if bad:
        value = d
        for k in bad:
            value = value[int(k)] if isinstance(value, (list, tuple)) else value[k]
        raise TypeError(
            f"config field {'.'.join(bad)}: a {type(value).__name__} ({value!r}) cannot be written to "
            f"config.json; use JSON values (str, int, float, bool, None, lists, dicts)"
        )
    text = json.dumps(d, indent=2, sort_keys=True) + "\n"
    if hasattr(type(config), "from_dict"):
        type(config).from_dict(json.loads(text))  # raises (naming the field) if it would not load back
    return text


def state_for_saving(model: Siglip2PreTrainedModel) -> dict:
    state = {}
    for k, v in model.state_dict().items():
        if v.is_meta:
            raise ValueError(f"save_pretrained: {k} is a meta tensor (no data); load or initialize the weights first")
        state[k] = v.detach().contiguous().cpu()
    return state


def save_pretrained(
    model: Siglip2PreTrainedModel, save_directory: str | os.PathLike, *, max_shard_size: int | str = 5 * 2**30
) -> None:
    """Everything that can fail on the model's side happens before the directory is touched (the shard size, the
    config.json text, the state dict), then `write_checkpoint` commits the files crash-safe."""
    limit = parse_size(max_shard_size)
    config_text = config_json(model)
    state = state_for_saving(model)
    write_checkpoint(save_directory, state, config_text, max_shard_size=limit)
