"""Input checks at the model entry points: each error names the argument, what was expected and what came.

Checks that need values (spatial_shapes ranges, token ids, mask counts) read the tensors once on the host; they are
skipped while torch.compile traces, where a data-dependent branch would break the graph.
"""

from __future__ import annotations

from typing import Any

import torch


def _tensor(name: str, t: object, ndim: int, *, integer: bool | None = None, floating: bool | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if integer and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if floating and not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _nonempty_batch(name: str, B: int, what: str) -> None:
    if B == 0:
        raise ValueError(f"{name}: got a batch of 0 {what} (shape with a leading 0); pass at least one")


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def check_vision_inputs(
    config: Any,
    pixel_values: torch.Tensor | None,
    pixel_attention_mask: torch.Tensor | None,
    spatial_shapes: torch.Tensor | None,
    fixres: bool = False,
) -> list[tuple[int, int]] | None:
    """Raise on bad vision inputs; return the NaFlex (h, w) per image as host ints (None for FixRes, or while
    compiling). One host sync in all: the validity flag travels with the shapes."""
    if pixel_values is None:
        raise ValueError("pixel_values is required")
    if fixres:
        _tensor("pixel_values", pixel_values, 4, floating=True)
        _nonempty_batch("pixel_values", pixel_values.shape[0], "images")
        want = (config.num_channels, config.image_size, config.image_size)
        if tuple(pixel_values.shape[1:]) != want:
            raise ValueError(
                f"pixel_values must have shape (B, {want[0]}, {want[1]}, {want[2]}) for this FixRes "
                f"checkpoint (image_size {config.image_size}), got {tuple(pixel_values.shape)}"
            )
        return None
    _tensor("pixel_values", pixel_values, 3, floating=True)
    B, L, F = pixel_values.shape
    _nonempty_batch("pixel_values", B, "images")
    want = config.num_channels * config.patch_size**2
    if want != F:
        raise ValueError(
            f"pixel_values last dimension must be num_channels * patch_size**2 = {want} "
            f"(pre-patchified NaFlex input), got {F} (shape {tuple(pixel_values.shape)})"
        )
    if spatial_shapes is None:
        raise ValueError("spatial_shapes (B, 2) is required with NaFlex pixel_values")
    _tensor("spatial_shapes", spatial_shapes, 2, integer=True)
    if tuple(spatial_shapes.shape) != (B, 2):
        raise ValueError(
            f"spatial_shapes must have shape ({B}, 2) to match pixel_values' batch, got {tuple(spatial_shapes.shape)}"
        )
    if pixel_attention_mask is not None:
        _tensor("pixel_attention_mask", pixel_attention_mask, 2)
        if tuple(pixel_attention_mask.shape) != (B, L):
            raise ValueError(
                f"pixel_attention_mask must have shape ({B}, {L}) like pixel_values' first two "
                f"dimensions, got {tuple(pixel_attention_mask.shape)}"
            )
    if _compiling():
        return None
    # computed where the tensors live; ONE host read of the validity flag together with the shapes (which the packed
    # path needs on the host anyway); details fetched only on error.
    # int64: h*w of int32 shapes overflows (65536 * 65536 wraps to 0 and would pass the check)
    h, w = spatial_shapes[:, 0].long(), spatial_shapes[:, 1].long()
    bad = (h < 1) | (w < 1) | (h * w > L)
    wrong = not_binary = None
    if pixel_attention_mask is not None:
        m = pixel_attention_mask
        not_binary = ~((m == 0) | (m == 1)).all()
        prefix = torch.arange(L, device=m.device)[None, :] < (h * w).to(m.device)[:, None]
        wrong = (m.bool() != prefix).any(1)
        flag = torch.stack([bad.any().to(m.device), not_binary, wrong.any()]).any()
    else:
        flag = bad.any()
    host = torch.cat([flag.reshape(1).long().to(spatial_shapes.device), spatial_shapes.reshape(-1).long()]).tolist()
    if not host[0]:
        return [(host[1 + 2 * i], host[2 + 2 * i]) for i in range(B)]
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"spatial_shapes[{i}] = ({int(h[i])}, {int(w[i])}): each (h, w) needs h >= 1, w >= 1 and "
            f"h * w <= sequence length {L}"
        )
    if bool(not_binary):
        raise ValueError("pixel_attention_mask must hold only 0/1 (or False/True) values")
    if wrong is None or pixel_attention_mask is None:  # without a mask the flag is `bad`, which raised above
        raise RuntimeError("check_vision_inputs: the validity flag was set but no check failed")
    i = int(wrong.nonzero()[0])
    raise ValueError(
        f"pixel_attention_mask[{i}] must mark exactly the first h*w = {int(h[i] * w[i])} tokens "
        f"of spatial_shapes[{i}] as valid, got {int(pixel_attention_mask[i].bool().sum())} valid tokens"
    )


def check_text_inputs(
    config: Any, input_ids: object, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None
) -> torch.Tensor:
    """Raise on bad text inputs; return `input_ids`, now known to be a tensor."""
    if input_ids is None:
        raise ValueError("input_ids is required")
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.ndim not in (1, 2):  # (L,) is one sequence, as transformers' view(-1, L) reads it
        raise ValueError(f"input_ids must have shape (B, L) or (L,), got {tuple(input_ids.shape)}")
    _tensor("input_ids", input_ids.flatten()[None], 2, integer=True)
    L = input_ids.shape[-1]
    if L == 0:
        raise ValueError(
            f"input_ids: sequence length 0 (shape {tuple(input_ids.shape)}); each text needs at least "
            f"one token (the pooled output is the last token)"
        )
    _nonempty_batch("input_ids", input_ids.numel() // L, "texts")
    if config.max_position_embeddings < L:
        raise ValueError(
            f"input_ids has sequence length {L}, more than max_position_embeddings ({config.max_position_embeddings})"
        )
    B = input_ids.reshape(-1, L).shape[0]
    if attention_mask is not None:
        _tensor("attention_mask", attention_mask, 2)
        if tuple(attention_mask.shape) != (B, L):
            raise ValueError(
                f"attention_mask must have shape ({B}, {L}) like input_ids, got {tuple(attention_mask.shape)}"
            )
    if position_ids is not None and not isinstance(position_ids, torch.Tensor):
        raise TypeError(f"position_ids must be a torch.Tensor, got {type(position_ids).__name__}")
    if position_ids is not None:
        _tensor("position_ids", position_ids.flatten()[None], 2, integer=True)
    if position_ids is not None and (position_ids.ndim not in (1, 2) or position_ids.shape[-1] != L):
        raise ValueError(f"position_ids must end in the sequence length {L}, got shape {tuple(position_ids.shape)}")
    if _compiling() or input_ids.numel() == 0:
        return input_ids
    lo, hi = torch.stack([input_ids.min(), input_ids.max()]).tolist()  # one host sync
    if lo < 0 or hi >= config.vocab_size:
        raise ValueError(f"input_ids must lie in [0, vocab_size={config.vocab_size}), got values in [{lo}, {hi}]")
    if position_ids is not None and (
        int(position_ids.min()) < 0 or int(position_ids.max()) >= config.max_position_embeddings
    ):
        raise ValueError(f"position_ids must lie in [0, max_position_embeddings={config.max_position_embeddings})")
    return input_ids
