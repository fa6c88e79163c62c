"""Our kernels inside the user's own transformers models: an attention backend, and a module patch.

Two levels, both for models the user already loads with transformers (never a runtime dependency of this package:
transformers is imported only when one of these functions is called):

1. `register()` adds the attention backend "siglip2_triton" (and its mask function) to transformers' public
   `AttentionInterface` / `AttentionMaskInterface`. Any model that dispatches attention through
   `ALL_ATTENTION_FUNCTIONS` (SigLIP2, SigLIP and the VLMs built on them) then runs `padded_attention` in every layer:

       register()
       model = transformers.Siglip2Model.from_pretrained(ckpt, attn_implementation="siglip2_triton")
       model.set_attn_implementation("siglip2_triton")                        # or on a live model
       vlm.set_attn_implementation({"vision_config": "siglip2_triton", "text_config": "sdpa"})

   It handles key-padding masks (what SigLIP towers build). Anything else (causal attention, a per-query mask,
   grouped-query heads, attention dropout) goes to transformers' sdpa with a one-time warning: never a wrong result.
   The mask function is transformers' own `sdpa_mask`, so a NaFlex tower always receives its padding mask (a
   custom backend name without one gets no mask at all and would attend to padding).

2. `patch_transformers(model)` goes further for every SigLIP2 / SigLIP vision or text tower found anywhere in
   `model` (a dual encoder, a classifier, or a VLM's `vision_tower`): the tower's forward runs
   `siglip2.models.modeling`'s packed path (fused patch embedding + position resize, varlen attention over
   `cu_seqlens`, the varlen pooling head) on the tower's *own* parameters, and a dual encoder's
   `return_loss=True` uses the fused sigmoid loss.
   It only sets an instance `forward`: the module tree, the state dict, parameter identity, hooks and
   `save_pretrained` stay untouched, and gradients flow to the same parameters. `unpatch_transformers(model)`
   removes exactly what was set. Calls that ask for attention weights (`output_attentions=True`) run the original
   forward, and so (with a one-time warning) do calls on a tower with hooks on an inner module, gradient
   checkpointing on, or a parametrized or pruned parameter, which the packed path would skip. The instance forward
   is an object bound to its module, so copy.deepcopy and torch.save carry the patch with the copy.
   Differences, as for `siglip2.fast`: padded rows of `last_hidden_state` are zeros.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import nn

# absolute: siglip2.kernels is installed from the top-level kernels/ folder (pyproject's package-dir), which a type
# checker follows only by the package name (typings/siglip2/kernels), never by a relative path
from siglip2.kernels import padded_attention, sigmoid_loss

BACKEND = "siglip2_triton"
# transformers versions whose SigLIP / SigLIP2 module layout and attention dispatch this works with: 5.0 introduced
# the attention/mask interfaces used here, and 5.6 flattened the SigLIP2 towers (Siglip2VisionTransformer and
# Siglip2TextTransformer are gone: Siglip2Model.vision_model is a Siglip2VisionModel taking pixel_attention_mask),
# the layout the packed tower forwards follow. 5.5.0 fails the parity tests, 5.6.0 passes them (bisected
# 2026-12-05). CI runs the transformers-facing tests under the newest release and again under the lower bound.
SUPPORTED = ((5, 6), (6, 0))

_state = {"impl": "auto"}
_warned: set[str] = set()


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - the test extra installs it
        raise ImportError("siglip2.integrations.transformers needs transformers: pip install transformers") from e
    return transformers


def _installed_version() -> str:
    return _transformers().__version__


def check_version(version: str | None = None) -> None:
    """Raise a RuntimeError unless the installed transformers is in the supported range."""
    version = version or _installed_version()
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    lo, hi = SUPPORTED
    if not lo <= tuple(parts) < hi:
        raise RuntimeError(
            f"siglip2 integrates with transformers >={'.'.join(map(str, lo))},<{'.'.join(map(str, hi))}; "
            f"found transformers {version}. Its module layout may differ, so nothing was patched "
            f"or registered (use siglip2.fast.Siglip2Model, which loads the same checkpoints)."
        )


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"{BACKEND}: {reason}; this call runs transformers' sdpa attention instead", stacklevel=3)


# ----------------------------------------------------------------------------------------------
# 1. The attention backend
# ----------------------------------------------------------------------------------------------


def _key_padding_mask(
    mask: torch.Tensor | None, batch: int, q_len: int, k_len: int
) -> tuple[torch.Tensor | None, str | None]:
    """A transformers attention mask -> (bool (B, Lk) key mask or None, None), or (None, why it is not one)."""
    if mask is None:
        return None, None
    if mask.ndim == 2:
        if tuple(mask.shape) != (batch, k_len):
            return None, f"a 2-D attention mask of shape {tuple(mask.shape)} (expected (B, Lk) = {(batch, k_len)})"
        return (mask if mask.dtype == torch.bool else mask != 0), None
    if mask.ndim != 4 or mask.shape[-1] != k_len or mask.shape[0] not in (1, batch) or mask.shape[2] not in (1, q_len):
        return None, f"an attention mask of shape {tuple(mask.shape)}"
    if mask.dtype == torch.bool:
        keep = mask
    else:  # additive: only 0 (attend) and "minus infinity" (masked) are a padding mask; anything else is a bias
        masked = mask <= torch.finfo(mask.dtype).min / 2
        if not bool(((mask == 0) | masked).all()):
            return None, "an additive attention mask with bias values"
        keep = ~masked
    # transformers' sdpa_mask expands one key row over queries (stride 0), so the common case needs no value check
    row = keep[:, :1, :1, :]
    same = all(keep.shape[i] == 1 or keep.stride(i) == 0 for i in (1, 2)) or torch.equal(keep, row.expand_as(keep))
    if not same:
        return None, "a per-query attention mask (causal or custom)"
    return row[:, 0, 0, :].expand(batch, k_len), None


def _check_mask_function(module: nn.Module) -> None:
    """A backend name with no mask function gets attention_mask=None from transformers even when inputs are padded,
    and padding would be attended silently: refuse instead."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    name = getattr(getattr(module, "config", None), "_attn_implementation", None)
    if name is not None and name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        raise RuntimeError(
            f"attention backend {name!r} runs siglip2_triton_attention but has no mask function "
            f"registered, so transformers would pass no padding mask and padded tokens would be "
            f"attended; register it with siglip2.fast.register() (or AttentionMaskInterface.register)"
        )


def siglip2_triton_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' attention-function contract: q, k, v (B, H, L, d) -> ((B, Lq, H, d), None)."""
    _check_mask_function(module)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    reason = None
    if dropout > 0:
        reason = "attention dropout is not supported by the kernel"
    elif causal and query.shape[2] > 1:
        reason = "causal attention"
    elif query.shape[1] != key.shape[1]:
        reason = "grouped-query attention (fewer key/value heads than query heads)"
    else:
        key_mask, reason = _key_padding_mask(attention_mask, query.shape[0], query.shape[2], key.shape[2])
    if reason is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        _warn_once(reason)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    out = padded_attention(query, key, value, key_mask, scaling, impl=_state["impl"])
    return out.transpose(1, 2), None


def register(impl: str = "auto") -> str:
    """Register the "siglip2_triton" attention backend with transformers; returns its name.

    impl: the kernels' impl ("auto" | "triton" | "reference"), as for every siglip2.kernels op.
    """
    if impl not in ("auto", "triton", "reference"):
        raise ValueError(f"impl must be one of 'auto', 'triton', 'reference', got {impl!r}")
    check_version()
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    _state["impl"] = impl
    AttentionInterface.register(BACKEND, siglip2_triton_attention)
    AttentionMaskInterface.register(BACKEND, sdpa_mask)  # 4-D bool masks, None when nothing is padded
    return BACKEND


# ----------------------------------------------------------------------------------------------
# 2. The module patch: transformers towers run siglip2.models.modeling's packed path on their own parameters
# ----------------------------------------------------------------------------------------------


@dataclass
class _Patch:
    """What patch_transformers set on one module, so unpatch can remove exactly that."""

    module: nn.Module
    path: str
    had_forward: bool
    old_forward: object
    shadow: nn.Module | None


_PATCHES = "_siglip2_patches"


def _tower_kinds() -> dict[type, tuple[type[nn.Module] | None, str]]:
    """transformers class -> (our class, kind), for the classes whose layout modeling.py mirrors."""
    from transformers.models.siglip import modeling_siglip as s1
    from transformers.models.siglip2 import modeling_siglip2 as s2

    from ..models import modeling as m

    return {
        s2.Siglip2VisionModel: (m.Siglip2VisionModel, "vision"),
        s2.Siglip2TextModel: (m.Siglip2TextModel, "text"),
        s1.SiglipVisionModel: (m.SiglipVisionModel, "vision"),
        s1.SiglipTextModel: (m.SiglipTextModel, "text"),
        s2.Siglip2Model: (None, "dual"),
        s1.SiglipModel: (None, "dual"),
    }


def _shadow(hf: nn.Module, ours_cls: type[nn.Module], kernel_impl: str) -> nn.Module:
    """Our model class built on the meta device, then pointed at the transformers module's own Parameters."""
    with torch.device("meta"):
        ours = ours_cls(hf.config, impl="triton", kernel_impl=kernel_impl)
    theirs = dict(hf.named_parameters())
    mine = dict(ours.named_parameters())
    if set(theirs) != set(mine):
        raise RuntimeError(
            f"cannot patch {type(hf).__name__}: its parameters differ from siglip2's "
            f"(only in transformers: {sorted(set(theirs) - set(mine))[:5]}, only in siglip2: "
            f"{sorted(set(mine) - set(theirs))[:5]}); nothing was patched"
        )
    for name, p in theirs.items():
        owner, _, leaf = name.rpartition(".")
        ours.get_submodule(owner)._parameters[leaf] = p
    object.__setattr__(
        ours,
        "_bindings",
        [
            (hf.get_submodule(n.rpartition(".")[0]), ours.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2])
            for n in theirs
        ],
    )
    return ours


def _rebind(ours: nn.Module) -> str | None:
    """Follow Parameters that were replaced on the transformers side since patching (e.g. load_state_dict(assign));
    returns the name of one that is no longer a plain Parameter (parametrized, pruned, deleted), else None."""
    # set with object.__setattr__ by _shadow, so it sits in the instance __dict__ (not a Module attribute)
    bindings: list[tuple[nn.Module, nn.Module, str]] = vars(ours)["_bindings"]
    for theirs_mod, ours_mod, leaf in bindings:
        p = theirs_mod._parameters.get(leaf)
        if p is None:
            return leaf
        if ours_mod._parameters[leaf] is not p:
            ours_mod._parameters[leaf] = p
    return None


def _to_hf_output(out: Any, return_dict: bool | None) -> Any:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    hf = BaseModelOutputWithPooling(
        last_hidden_state=out.last_hidden_state,
        pooler_output=out.pooler_output,
        hidden_states=out.hidden_states,
        attentions=out.attentions,
    )
    return hf if return_dict is not False else hf.to_tuple()


_SIGNATURES: dict[Any, inspect.Signature] = {}


def _notice_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"patch_transformers: {reason}; such calls run transformers' original forward", stacklevel=4)


def _user_hooks(module: nn.Module) -> bool:
    """Hooks someone registered on `m`; transformers' own output-capturing hooks (installed on the inner layers the
    first time an original forward runs, inactive outside its capture context) do not count."""
    hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks)
    return any(
        getattr(h, "__module__", None) != "transformers.utils.output_capturing" for d in hooks for h in d.values()
    )


class _PatchedForward:
    """The instance `forward` that patch_transformers sets: an object holding the module it patches, not a closure
    over it, so that copy.deepcopy and pickle (torch.save) carry it along with the module. A closure is copied as
    is, and the copy would keep computing with the original module's parameters."""

    def __init__(self, module: nn.Module, previous: Any) -> None:
        self.module, self.previous = module, previous  # previous: an instance forward that was there before, or None

    def original(self) -> Callable[..., Any]:
        return self.previous if self.previous is not None else type(self.module).forward.__get__(self.module)

    @property
    def __signature__(self) -> inspect.Signature:  # what inspect.signature(model.forward) shows (e.g. Trainer)
        return self._signature(self.original())

    @staticmethod
    def _signature(fn: Callable[..., Any]) -> inspect.Signature:
        key = getattr(fn, "__func__", fn)
        sig = _SIGNATURES.get(key)
        if sig is None:
            sig = _SIGNATURES[key] = inspect.signature(fn)
        return sig

    def _arguments(self, original: Callable[..., Any], args: Any, kwargs: Any) -> dict[str, Any]:
        a = dict(self._signature(original).bind(*args, **kwargs).arguments)
        a.update(a.pop("kwargs", {}))
        return a


class _TowerForward(_PatchedForward):
    def __init__(self, module: nn.Module, previous: Any, shadow: nn.Module) -> None:
        super().__init__(module, previous)
        self.shadow = shadow

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hf, original = self.module, self.original()
        a = self._arguments(original, args, kwargs)
        hf_config: Any = hf.config  # a transformers PretrainedConfig (nn.Module's typing only knows tensors/modules)
        if a.get("output_attentions") or (a.get("output_attentions") is None and hf_config.output_attentions):
            return original(*args, **kwargs)  # the kernels never materialize attention weights
        if a.pop("interpolate_pos_encoding", False):
            return original(*args, **kwargs)
        # the packed path runs the shadow's modules, so hooks on the tower's inner modules would never fire
        inner = next((n for n, m in hf.named_modules() if m is not hf and _user_hooks(m)), None)
        if inner is not None:
            _notice_once(f"{type(hf).__name__} has hooks on an inner module ({inner!r}, maybe more)")
            return original(*args, **kwargs)
        checkpointing = any(getattr(m, "gradient_checkpointing", False) is True for m in hf.modules())
        if hf.training and torch.is_grad_enabled() and checkpointing:
            _notice_once(f"{type(hf).__name__} has gradient checkpointing on, which the packed path does not do")
            return original(*args, **kwargs)
        gone = _rebind(self.shadow)
        if gone is not None:
            _notice_once(f"{type(hf).__name__} has a parameter {gone!r} that is no longer a plain Parameter")
            return original(*args, **kwargs)
        # flags left to the config follow the tower's live config (the shadow's is a copy taken at patch time)
        if a.get("output_hidden_states") is None:
            a["output_hidden_states"] = bool(getattr(hf_config, "output_hidden_states", False))
        return_dict = a.pop("return_dict", None)
        if return_dict is None:
            return_dict = getattr(hf_config, "return_dict", True)
        self.shadow.train(hf.training)
        out = self.shadow(**a, return_dict=True)
        return _to_hf_output(out, return_dict)


class _DualForward(_PatchedForward):
    def __init__(self, module: nn.Module, previous: Any, kernel_impl: str) -> None:
        super().__init__(module, previous)
        self.kernel_impl = kernel_impl

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hf, original = self.module, self.original()
        a = self._arguments(original, args, kwargs)
        return_loss, return_dict = a.pop("return_loss", None), a.pop("return_dict", None)
        if return_dict is None:
            return_dict = getattr(hf.config, "return_dict", True)
        out = original(**a, return_loss=False, return_dict=True)
        if return_loss:
            n_img, n_txt = out.image_embeds.shape[0], out.text_embeds.shape[0]
            if n_img != n_txt:
                raise ValueError(
                    f"return_loss needs as many texts as images (a square batch), got {n_txt} texts and {n_img} images"
                )
            loss = sigmoid_loss(out.image_embeds, out.text_embeds, hf.logit_scale, hf.logit_bias, impl=self.kernel_impl)
            out = type(out)(loss=loss, **{k: v for k, v in out.items() if k != "loss"})
        return out if return_dict is not False else out.to_tuple()


def patch_transformers(model: nn.Module, kernel_impl: str = "auto") -> list[str]:
    """Run every SigLIP2 / SigLIP tower inside `model` through siglip2's packed kernels path, in place.

    Returns the module paths it patched ("" is `model` itself). Patching twice is a no-op for patched modules.
    """
    if kernel_impl not in ("auto", "triton", "reference"):
        raise ValueError(f"kernel_impl must be one of 'auto', 'triton', 'reference', got {kernel_impl!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a transformers model), got {type(model).__name__}")
    check_version()
    kinds = _tower_kinds()
    found = [(path, mod, *kinds[type(mod)]) for path, mod in model.named_modules() if type(mod) in kinds]
    # build every shadow first, so a layout mismatch leaves the model untouched
    todo = []
    for path, mod, ours_cls, kind in found:
        if getattr(mod, _PATCHES, None) is not None:
            continue
        todo.append((path, mod, kind, _shadow(mod, ours_cls, kernel_impl) if ours_cls is not None else None))
    patched = []
    for path, mod, kind, shadow in todo:
        had = "forward" in mod.__dict__
        record = _Patch(mod, path, had, mod.__dict__.get("forward"), shadow)
        previous = mod.__dict__.get("forward")
        if kind == "dual":
            mod.forward = _DualForward(mod, previous, kernel_impl)
        else:
            mod.forward = _TowerForward(mod, previous, shadow)
        object.__setattr__(mod, _PATCHES, record)
        patched.append(path)
    return patched


def unpatch_transformers(model: nn.Module) -> list[str]:
    """Undo patch_transformers on every module inside `model`; returns the module paths it restored."""
    restored = []
    for path, mod in model.named_modules():
        record = mod.__dict__.get(_PATCHES)
        if record is None:
            continue
        if record.had_forward:
            mod.forward = record.old_forward
        else:
            del mod.forward
        object.__delattr__(mod, _PATCHES)
        restored.append(path)
    return restored
