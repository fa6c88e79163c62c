"""Public attention ops: packed varlen attention (flash-attn's `flash_attn_varlen_func` layout) and SDPA-layout
padded attention with a boolean key mask. Both validate, then dispatch with impl="auto"|"triton"|"reference".

Semantics (shared with kernels/reference.py): non-causal, softmax in fp32, sequence i's queries see only
sequence i's (unmasked) keys, and a query with no visible key returns zeros. The Triton path is
attention_triton.attention_op (a torch.library custom op with autograd), imported only when dispatched to, so this
module imports without Triton.
"""

from __future__ import annotations

import math
import numbers

import torch

from . import reference
from ._utils import MAX_HEAD_DIM, check_tensor, resolve_impl

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # float64: reference only


def _check_qkv(q, k, v, ndim, op):
    check_tensor("q", q, ndim=ndim, dtypes=DTYPES, op=op)
    check_tensor("k", k, ndim=ndim, dtypes=(q.dtype,), device=q.device, op=op)
    check_tensor("v", v, ndim=ndim, dtypes=(q.dtype,), device=q.device, op=op)
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    hq, hk = (q.shape[1], k.shape[1])
    if hq != hk:
        raise ValueError(f"{op}: q and k must have the same number of heads, got {hq} (q) and {hk} (k)")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{op}: q and k must have the same head dim, got {q.shape[-1]} (q) and {k.shape[-1]} (k)")
    if q.shape[-1] < 1:
        raise ValueError(f"{op}: head dim must be >= 1, got {q.shape[-1]}")


def _check_scale(softmax_scale, op):
    if softmax_scale is None:
        return
    if (
        isinstance(softmax_scale, bool)
        or not isinstance(softmax_scale, numbers.Real)
        or not math.isfinite(softmax_scale)
    ):
        raise ValueError(f"{op}: softmax_scale must be None or a finite real number, got {softmax_scale!r}")


def _check_int(name, value, op):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{op}: {name} must be a non-negative int, got {value!r}")


def _cu_seqlens_max(name, cu, total, op) -> int:
    """Check the values of cu_seqlens and return the longest sequence. Checked on every call, never cached: a cache
    keyed on the tensor misses changes made outside torch (NumPy views, DLPack), and a stale max_seqlen makes the
    kernel return wrong rows. The check is reduced on the tensor's device to four numbers: one small host transfer."""
    c = cu.to(torch.int64)
    lens = c[1:] - c[:-1]
    first, last, shortest, longest = torch.stack([c[0], c[-1], lens.min(), lens.max()]).tolist()
    if first != 0:
        raise ValueError(f"{op}: {name} must start at 0, got {first}")
    if last != total:
        raise ValueError(f"{op}: {name} must end at the number of packed tokens ({total}), got {last}")
    if shortest < 0:
        i = int((lens < 0).nonzero()[0])
        raise ValueError(
            f"{op}: {name} must be non-decreasing, but entry {i + 1} ({int(c[i + 1])}) < entry {i} ({int(c[i])})"
        )
    return longest


def _unsupported(q):
    """What the Triton kernels cannot do for these inputs (auto then uses the reference), or None."""
    if q.dtype == torch.float64:
        return "float64 inputs"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dims above {MAX_HEAD_DIM} (got {q.shape[-1]})"
    return None


def varlen_attention(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    softmax_scale=None,
    *,
    impl="auto",
    check_values=True,
):
    """Non-causal attention over packed sequences.

    q: (total_q, H, D); k, v: (total_k, H, D); fp16, bf16 or fp32.
    cu_seqlens_q, cu_seqlens_k: int32 (B+1,) prefix sums (start at 0, end at total_*, non-decreasing).
    max_seqlen_q, max_seqlen_k: ints >= the longest query / key sequence (they size the launch grid).
    softmax_scale: defaults to D ** -0.5. Returns (total_q, H, D) in q's dtype; queries whose sequence has no
    keys get zeros. Sequences may have different query and key lengths (e.g. one pooling probe per image).
    check_values=False skips the value checks of cu_seqlens against the max_seqlens (one host sync): for callers
    that built them on the host, as the model does once per forward (siglip2.models.packing.PackedBatch).
    """
    op = "varlen_attention"
    _check_qkv(q, k, v, 3, op)
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        check_tensor(name, cu, ndim=1, dtypes=(torch.int32,), device=q.device, op=op)
        if cu.numel() < 2:
            raise ValueError(f"{op}: {name} must hold B+1 >= 2 prefix sums, got {cu.numel()} entries")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(
            f"{op}: cu_seqlens_q and cu_seqlens_k must have the same length (B+1), got "
            f"{cu_seqlens_q.numel()} and {cu_seqlens_k.numel()}"
        )
    _check_int("max_seqlen_q", max_seqlen_q, op)
    _check_int("max_seqlen_k", max_seqlen_k, op)
    _check_scale(softmax_scale, op)
    if check_values and not torch.compiler.is_compiling():  # one host sync; skipped inside compiled graphs
        for name, cu, tensor, mx, mx_name in (
            ("cu_seqlens_q", cu_seqlens_q, q, max_seqlen_q, "max_seqlen_q"),
            ("cu_seqlens_k", cu_seqlens_k, k, max_seqlen_k, "max_seqlen_k"),
        ):
            longest = _cu_seqlens_max(name, cu, tensor.shape[0], op)
            if mx < longest:
                raise ValueError(f"{op}: {mx_name} must be >= the longest sequence in {name} ({longest}), got {mx}")
    impl = resolve_impl(impl, q.device, op, _unsupported(q))
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
    if impl == "reference":
        return reference.varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
    from . import attention_triton

    return attention_triton.attention_op(q, k, v, cu_seqlens_q, cu_seqlens_k, None, max_seqlen_q, max_seqlen_k, scale)[
        0
    ]


def padded_attention(q, k, v, key_padding_mask=None, softmax_scale=None, *, impl="auto"):
    """Non-causal attention in SDPA's layout with a per-key mask.

    q: (B, H, Lq, D); k, v: (B, H, Lk, D); fp16, bf16 or fp32 (any strides with a unit-stride last dim avoid a copy).
    key_padding_mask: None or bool (B, Lk), True = attend; any pattern (not only a prefix). Returns (B, H, Lq, D);
    a query whose keys are all masked gets zeros. softmax_scale defaults to D ** -0.5.
    """
    op = "padded_attention"
    _check_qkv(q, k, v, 4, op)
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"{op}: q and k must have the same batch size, got {q.shape[0]} (q) and {k.shape[0]} (k)")
    if key_padding_mask is not None:
        check_tensor("key_padding_mask", key_padding_mask, ndim=2, dtypes=(torch.bool,), device=q.device, op=op)
        if tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2]):
            raise ValueError(
                f"{op}: key_padding_mask must have shape (B, Lk) = {(k.shape[0], k.shape[2])}, "
                f"got {tuple(key_padding_mask.shape)}"
            )
    _check_scale(softmax_scale, op)
    impl = resolve_impl(impl, q.device, op, _unsupported(q))
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
    if impl == "reference" or k.shape[2] == 0 or q.numel() == 0:
        # no keys: every query gets zeros (as varlen_attention's empty sequences); nothing to launch a kernel for
        return reference.padded_attention(q, k, v, key_padding_mask, scale)
    from . import attention_triton

    return attention_triton.attention_op(q, k, v, None, None, key_padding_mask, q.shape[2], k.shape[2], scale)[0]
