"""NaFlex patch embedding: `naflex_patch_embed`, transformers' `Siglip2VisionEmbeddings` as one op.

out[b, t] = pixel_values[b, t] @ weight^T + bias + resize(pos_embed, h_b, w_b)[t], where the resize is
`F.interpolate(grid, (h, w), mode="bilinear", align_corners=False, antialias=True)` in fp32, row-major
(y*w + x); padding rows (t >= h*w) get the first resized row. With `cu_seqlens` only the valid tokens
are returned, packed. Triton is imported lazily (only when the Triton path runs).

What is Triton (kernels/patch_embed_triton.py): the whole forward (GEMM, bias and resized positions) is one
kernel; in the backward only d pos_embed (the resize adjoint) is a Triton kernel, while d pixel_values and
d weight are torch matmuls and d bias a torch sum.

Host syncs. The kernels read `spatial_shapes` on the device and never sync. Eager calls validate the
values of `spatial_shapes`/`cu_seqlens` (h, w >= 1, h*w <= L, prefix sums): free when `spatial_shapes`
lives on the CPU (it is then copied to the device without blocking), one sync when it lives on the GPU.
Under torch.compile the value checks are skipped; the kernels clamp h, w to >= 1 and never write outside
their output, so a bad value gives wrong numbers but no crash. The packed output needs its size
(cu_seqlens[-1]) on the host: one more sync when cu_seqlens is on the GPU.
"""

from __future__ import annotations

import math

import torch

from ._utils import check_tensor, resolve_impl

_OP = "naflex_patch_embed"
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTS = (torch.int32, torch.int64)


def _validate(pixel_values, spatial_shapes, weight, bias, pos_embed, cu_seqlens, check_values=True, num_tokens=None):
    check_tensor("pixel_values", pixel_values, ndim=3, dtypes=_FLOATS, op=_OP)
    dev = pixel_values.device
    check_tensor("weight", weight, ndim=2, dtypes=_FLOATS, device=dev, op=_OP)
    check_tensor("bias", bias, ndim=1, dtypes=(weight.dtype,), device=dev, op=_OP)
    check_tensor("pos_embed", pos_embed, ndim=2, dtypes=(weight.dtype,), device=dev, op=_OP)
    check_tensor("spatial_shapes", spatial_shapes, ndim=2, dtypes=_INTS, op=_OP)
    if spatial_shapes.device not in (dev, torch.device("cpu")):
        raise ValueError(f"{_OP}: spatial_shapes must be on {dev} or the CPU, got {spatial_shapes.device}")
    B, L, K = pixel_values.shape
    D = weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(
            f"{_OP}: weight must have shape (D, {K}) to match pixel_values (B, L, {K}), got {tuple(weight.shape)}"
        )
    if bias.shape[0] != D:
        raise ValueError(f"{_OP}: bias must have shape ({D},) like weight's rows, got {tuple(bias.shape)}")
    if pos_embed.shape[1] != D:
        raise ValueError(f"{_OP}: pos_embed must have shape (G*G, {D}), got {tuple(pos_embed.shape)}")
    g = math.isqrt(pos_embed.shape[0])
    if g == 0 or g * g != pos_embed.shape[0]:
        raise ValueError(
            f"{_OP}: pos_embed must have a perfect-square number of rows (a G x G grid), got {pos_embed.shape[0]}"
        )
    if tuple(spatial_shapes.shape) != (B, 2):
        raise ValueError(
            f"{_OP}: spatial_shapes must have shape ({B}, 2) (h, w per image), got {tuple(spatial_shapes.shape)}"
        )
    if cu_seqlens is not None:
        check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32,), op=_OP)
        if cu_seqlens.device not in (dev, torch.device("cpu")):
            raise ValueError(f"{_OP}: cu_seqlens must be on {dev} or the CPU, got {cu_seqlens.device}")
        if cu_seqlens.shape[0] != B + 1:
            raise ValueError(f"{_OP}: cu_seqlens must have shape ({B + 1},) (batch + 1), got {tuple(cu_seqlens.shape)}")
    if torch.compiler.is_compiling():
        return
    if num_tokens is not None:
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
            raise ValueError(f"{_OP}: num_tokens must be None or a non-negative int, got {num_tokens!r}")
        if cu_seqlens is None:
            raise ValueError(f"{_OP}: num_tokens (= {num_tokens}) needs cu_seqlens (it sizes the packed output)")
    if not check_values:
        return
    # value checks: one host transfer for everything (free when the index tensors are on the CPU)
    vals = [spatial_shapes.to(torch.int64).reshape(-1)]
    if cu_seqlens is not None:
        vals.append(cu_seqlens.to(device=spatial_shapes.device, dtype=torch.int64))
    host = torch.cat(vals).tolist()  # Python ints: h*w below cannot overflow (int32 shapes would)
    hw = [(host[2 * i], host[2 * i + 1]) for i in range(B)]
    for i, (h, w) in enumerate(hw):
        if h < 1 or w < 1:
            raise ValueError(f"{_OP}: spatial_shapes[{i}] = ({h}, {w}); h and w must be >= 1")
        if h * w > L:
            raise ValueError(
                f"{_OP}: spatial_shapes[{i}] = ({h}, {w}) has h*w = {h * w} tokens, more than pixel_values' L = {L}"
            )
    if cu_seqlens is not None:
        cu = host[2 * B :]
        expect = [0]
        for h, w in hw:
            expect.append(expect[-1] + h * w)
        # the Triton launcher sizes its output by num_tokens: rows past cu_seqlens[-1] would stay unwritten
        # (uninitialized memory). Checked here, where the host already holds cu_seqlens: reading it anywhere else
        # would cost the sync that num_tokens exists to save (check_values=False leaves it to the caller)
        if num_tokens is not None and num_tokens != cu[-1]:
            raise ValueError(
                f"{_OP}: num_tokens = {num_tokens} must equal cu_seqlens[-1] = {cu[-1]} (the number of packed tokens)"
            )
        if cu != expect:
            more = "..." if B > 7 else ""
            raise ValueError(
                f"{_OP}: cu_seqlens must be the prefix sums of h*w from spatial_shapes, "
                f"expected {expect[:8]}{more}, got {cu[:8]}{more}"
            )


def naflex_patch_embed(
    pixel_values,
    spatial_shapes,
    weight,
    bias,
    pos_embed,
    *,
    cu_seqlens=None,
    impl="auto",
    num_tokens=None,
    check_values=True,
):
    """Linear patch embedding + per-image antialiased bilinear position-grid resize (SigLIP2 NaFlex).

    pixel_values: (B, L, C*P*P) pre-patchified, padded, any float dtype (cast to weight's dtype);
    spatial_shapes: (B, 2) int32/int64 (h, w) patch grid per image, h, w >= 1, h*w <= L;
    weight: (D, C*P*P); bias: (D,); pos_embed: (G*G, D), a row-major G x G grid (same dtype as weight);
    cu_seqlens: optional int32 (B+1,) prefix sums of h*w: return only the valid tokens, packed.
    Returns (B, L, D), or (sum h*w, D) with cu_seqlens, in weight's dtype.
    impl: "auto" (Triton on CUDA, or on the CPU under TRITON_INTERPRET=1; the reference otherwise and for float64
    parameters), "triton" (raises where it cannot run) or "reference".
    num_tokens: with cu_seqlens, the packed length sum(h*w) if the caller knows it (like flash-attn's max_seqlen:
    it saves the host read of cu_seqlens[-1]); it must equal cu_seqlens[-1]. check_values=False skips the value
    checks of spatial_shapes, cu_seqlens and num_tokens (the caller guarantees them, as the model does after its
    entry check): with both, and the index tensors on the CPU, the op reads nothing back from the device.
    """
    _validate(pixel_values, spatial_shapes, weight, bias, pos_embed, cu_seqlens, check_values, num_tokens)
    dev = pixel_values.device
    if pixel_values.shape[0] == 0:  # no images: an empty output of the right shape (still connected to weight)
        out = torch.nn.functional.linear(pixel_values.to(weight.dtype), weight, bias)
        return out.reshape(0, weight.shape[0]) if cu_seqlens is not None else out
    spatial_shapes = spatial_shapes.to(dev, non_blocking=True)
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(dev, non_blocking=True)
    unsupported = "float64 parameters" if weight.dtype == torch.float64 else None
    if resolve_impl(impl, dev, _OP, unsupported) == "reference":
        from . import reference

        return reference.naflex_patch_embed(
            pixel_values, spatial_shapes, weight, bias, pos_embed, cu_seqlens=cu_seqlens
        )
    from .patch_embed_triton import patch_embed_op

    return patch_embed_op(pixel_values, spatial_shapes, weight, bias, pos_embed, cu_seqlens, num_tokens)
