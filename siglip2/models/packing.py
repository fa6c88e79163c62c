"""`PackedBatch`: the packed NaFlex layout of one vision batch, built once at the model entry.

The packed (impl "triton") vision path never computes padding: the valid tokens of all images are one (N, D)
sequence, split by `cu_seqlens` (flash-attn's varlen layout). Everything the layers need to know about that layout
lives here, computed once from host-side lengths, so no layer reads a tensor back to the host:

    processor output -> check_vision_inputs (the one host sync: validity flag + spatial_shapes)
                     -> PackedBatch -> patch embedding (packed rows) -> every encoder layer (varlen attention)
                     -> pooling head (one query per image) -> unpack() for last_hidden_state

Callers that already hold the lengths on the host (a data loader) build it with `PackedBatch.from_spatial_shapes`
from CPU tensors, pass it as `packed=` and the forward does no host sync at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class PackedBatch:
    cu_seqlens: torch.Tensor  # (B+1,) int32 prefix sums of the valid lengths, on the model's device
    probe_cu_seqlens: torch.Tensor  # (B+1,) int32 0..B on the device: one pooling query per image
    spatial_shapes: torch.Tensor  # (B, 2) int64 (h, w) per image: on the CPU (on the device while compiling)
    lengths: tuple[int, ...] | None  # valid tokens per image, host; None while torch.compile traces
    seq_len: int  # L, the padded length of pixel_values and last_hidden_state
    valid: torch.Tensor | None  # (B, L) bool on the device (where unpack() puts rows); None: every token valid

    @property
    def batch_size(self) -> int:
        return self.spatial_shapes.shape[0]

    @property
    def total(self) -> int | None:
        """N, the number of packed tokens (None while compiling: a data-dependent size)."""
        return None if self.lengths is None else sum(self.lengths)

    @property
    def max_seqlen(self) -> int:
        """The longest image (sizes the attention grid); the padded length L while compiling."""
        return self.seq_len if self.lengths is None else max(self.lengths, default=0)

    def cu_seqlens_host(self) -> torch.Tensor:
        """The prefix sums as a CPU tensor, made from host ints (no device read); the device copy while compiling."""
        if self.lengths is None:
            return self.cu_seqlens
        return torch.tensor([0, *itertools.accumulate(self.lengths)], dtype=torch.int32)

    @classmethod
    def from_spatial_shapes(
        cls,
        spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
        seq_len: int,
        device: torch.device | str,
        pixel_attention_mask: torch.Tensor | None = None,
    ) -> PackedBatch:
        """spatial_shapes: (h, w) per image, as a list of pairs (no host sync) or a (B, 2) tensor (one read).

        With `pixel_attention_mask` (the processor's), image b has h*w valid tokens; without one every one of the
        `seq_len` tokens is valid (transformers then attends to all of them) and nothing is packed away.
        """
        device = torch.device(device)
        valid = None if pixel_attention_mask is None else pixel_attention_mask.to(device=device, dtype=torch.bool)
        if isinstance(spatial_shapes, torch.Tensor) and torch.compiler.is_compiling():
            # no host values inside a graph: prefix sums on the device, the grid sized by the padded length
            shapes = spatial_shapes.to(device=device, dtype=torch.int64)
            B = shapes.shape[0]
            lens = shapes[:, 0] * shapes[:, 1] if valid is not None else shapes.new_full((B,), seq_len)
            cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
            probe = torch.arange(B + 1, dtype=torch.int32, device=device)
            return cls(cu, probe, shapes, None, int(seq_len), valid)
        if isinstance(spatial_shapes, torch.Tensor):
            spatial_shapes = spatial_shapes.tolist()  # the one host read when the shapes live on the GPU
        pairs = [(int(h), int(w)) for h, w in spatial_shapes]
        lengths = tuple(h * w for h, w in pairs) if valid is not None else (int(seq_len),) * len(pairs)
        cu_host = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
        cu = (cu_host.pin_memory() if device.type == "cuda" else cu_host).to(device, non_blocking=True)
        probe = torch.arange(len(pairs) + 1, dtype=torch.int32, device=device)
        shapes = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
        return cls(cu, probe, shapes, lengths, int(seq_len), valid)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """Packed (N, D) -> padded (B, L, D), zeros at padding, with no host sync (masked_scatter)."""
        if self.valid is None:
            return x.reshape(self.batch_size, self.seq_len, x.shape[-1])
        out = x.new_zeros(self.batch_size, self.seq_len, x.shape[-1])
        return out.masked_scatter(self.valid[..., None], x)
