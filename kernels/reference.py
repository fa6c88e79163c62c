"""Readable PyTorch references for every kernel: the correctness oracles and the CPU fallback.

Each function has the signature of the public op (minus `impl`) and runs on any device with autograd.
Numerics follow transformers' SigLIP2: attention softmax in fp32, the position-table resize in fp32,
the sigmoid loss in fp32 (transformers' fp32 label matrix promotes half-precision logits). These favour clarity
over speed (Python loops over sequences).
Never imports Triton.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------


def _attend(q, k, v, scale, key_mask=None):
    """q: (..., Lq, D), k/v: (..., Lk, D), key_mask: broadcastable bool (..., 1, Lk), True = attend.

    Softmax in fp32 (float64 for float64 inputs); a query with no visible key gets zeros (not NaN), as the kernels do.
    """
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 statistics; float64 inputs stay float64
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale  # (..., Lq, Lk)
    if s.shape[-1] == 0:  # no keys at all: zeros (a matmul over the empty key axis keeps autograd connected)
        return torch.matmul(s.to(v.dtype), v)
    if key_mask is not None:
        s = s.masked_fill(~key_mask, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    denom = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.matmul(p.to(v.dtype), v)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None):
    """Non-causal attention over packed sequences (flash-attn's `flash_attn_varlen_func` layout).

    q: (total_q, H, D); k, v: (total_k, H, D); cu_seqlens_q/k: int32 (B+1,) prefix sums.
    Sequence i's queries q[cu_q[i]:cu_q[i+1]] attend to keys k[cu_k[i]:cu_k[i+1]]. Returns (total_q, H, D).
    """
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs = []
    for i in range(len(bounds_q) - 1):
        q0, q1, k0, k1 = bounds_q[i], bounds_q[i + 1], bounds_k[i], bounds_k[i + 1]
        if k1 == k0:
            outs.append(torch.zeros_like(q[q0:q1]))  # queries with no keys get zeros
            continue
        qi, ki, vi = (t.transpose(0, 1) for t in (q[q0:q1], k[k0:k1], v[k0:k1]))  # (H, L, D)
        outs.append(_attend(qi, ki, vi, scale).transpose(0, 1))
    return torch.cat(outs) if outs else torch.zeros_like(q)


def padded_attention(q, k, v, key_padding_mask=None, softmax_scale=None):
    """SDPA-layout attention. q: (B, H, Lq, D); k, v: (B, H, Lk, D); key_padding_mask: bool (B, Lk), True = attend."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    return _attend(q, k, v, scale, mask)


# ----------------------------------------------------------------------------------------------
# NaFlex patch embedding + position-table resize
# ----------------------------------------------------------------------------------------------


def resize_pos_embed(pos_embed, h: int, w: int):
    """(G*G, D) learned grid -> (h*w, D), bilinear + antialias, align_corners=False, in fp32 (float64 stays float64),
    row-major y*w+x."""
    g = math.isqrt(pos_embed.shape[0])
    acc = torch.promote_types(pos_embed.dtype, torch.float32)
    grid = pos_embed.to(acc).reshape(g, g, -1).permute(2, 0, 1)[None]  # (1, D, G, G)
    if w == 1 and h != 1:
        # torch's CPU antialias kernel (2.13) skips the vertical pass when the output width is 1 and returns row 0
        # for every row; the resize is separable, so resize the transposed grid to (1, h) instead.
        out = F.interpolate(grid.transpose(2, 3), size=(w, h), mode="bilinear", align_corners=False, antialias=True)
        return out[0].reshape(pos_embed.shape[1], h * w).t()
    out = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out[0].reshape(pos_embed.shape[1], h * w).t()


def naflex_patch_embed(pixel_values, spatial_shapes, weight, bias, pos_embed, *, cu_seqlens=None):
    """transformers' `Siglip2VisionEmbeddings`: linear patch embedding plus the per-image resized position grid.

    pixel_values: (B, L, C*P*P) pre-patchified, padded; spatial_shapes: (B, 2) int (h, w);
    weight: (D, C*P*P); bias: (D,); pos_embed: (G*G, D).
    Returns (B, L, D); padding rows get the first resized position row. With `cu_seqlens` (int32, B+1, the
    prefix sums of h*w) returns only the valid tokens packed as (sum h*w, D).
    """
    patches = F.linear(pixel_values.to(weight.dtype), weight, bias)  # (B, L, D)
    _B, L, _ = patches.shape
    pos = []
    for h, w in spatial_shapes.tolist():
        p = resize_pos_embed(pos_embed, h, w).to(pos_embed.dtype)  # (h*w, D)
        pos.append(torch.cat([p, p[:1].expand(L - h * w, -1)]))
    out = patches + torch.stack(pos)
    if cu_seqlens is None:
        return out
    valid = torch.arange(L, device=out.device)[None, :] < (spatial_shapes[:, 0] * spatial_shapes[:, 1])[:, None]
    return out[valid]


# ----------------------------------------------------------------------------------------------
# Sigmoid contrastive loss
# ----------------------------------------------------------------------------------------------


def sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias):
    """SigLIP loss exactly as transformers' `Siglip2Model` computes it (materializes the n x n logits).

    image_embeds, text_embeds: (n, d), already L2-normalized; logit_scale: the log-scale (exponentiated here);
    logit_bias: scalar. logits = text @ image^T * exp(scale) + bias, label +1 on the diagonal and -1 elsewhere,
    loss = -sum(logsigmoid(label * logits)) / n.
    """
    n = text_embeds.shape[0]
    logits = text_embeds @ image_embeds.t() * logit_scale.exp() + logit_bias  # (n, n)
    # float32 labels as transformers builds them: half-precision logits are promoted, the loss is fp32
    labels = 2 * torch.eye(n, device=logits.device, dtype=torch.promote_types(logits.dtype, torch.float32)) - 1
    return -F.logsigmoid(labels * logits).sum() / n


def sigmoid_loss_block(image, text, logit_scale, logit_bias, positives: bool, norm: float, compute_grads: bool):
    """One (text block x image block) pair of the ring loss, materialized: the equivalent of
    `sigmoid_loss_triton.sigmoid_loss_block_fwd` (same outputs and conventions).

    image: (N, D), text: (M, D); with `positives`, text row r and image row r are a pair. Returns the fp32 0-d
    loss / norm, then (d_image, d_text, d_logit_scale, d_logit_bias), or four empty tensors without `compute_grads`.
    """
    with torch.enable_grad():
        xs = [x.detach().requires_grad_(compute_grads) for x in (image, text, logit_scale, logit_bias)]
        logits = xs[1] @ xs[0].t() * xs[2].exp() + xs[3]  # (M, N) in the input dtype, like transformers
        labels = -torch.ones_like(logits)
        if positives:
            labels = labels + 2 * torch.eye(*logits.shape, device=logits.device, dtype=logits.dtype)
        loss = -F.logsigmoid(labels * logits).sum() / norm
        if not compute_grads:
            e = torch.empty(0, device=image.device)
            return loss.detach().float(), e, e, e, e
        grads = torch.autograd.grad(loss, xs)
    return (loss.detach().float(), *grads)
