"""SigLIP2 building blocks with transformers' attribute names, and the two ways an encoder attends.

`EagerAttention` is transformers' eager path (the reference impl); `KernelAttention` calls siglip2.kernels on packed
(varlen, `cu_seqlens`) or padded (key mask) tokens (the triton impl). The models in modeling.py pick one per forward.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import naflex_patch_embed, padded_attention, reference, varlen_attention


# ----------------------------------------------------------------------------------------------
# Attention contexts: how an encoder attends, decided once per forward
# ----------------------------------------------------------------------------------------------

class EagerAttention:
    """transformers' eager path: (B, H, L, d) scores + additive mask, softmax in fp32, weights returnable."""

    def __init__(self, additive_mask=None, need_weights=False):
        self.mask, self.need_weights = additive_mask, need_weights

    def __call__(self, q, k, v, scale, dropout):  # q, k, v: (B, L, H, d)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        w = torch.matmul(q, k.transpose(-1, -2)) * scale
        if self.mask is not None:
            w = w + self.mask
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        w = F.dropout(w, p=dropout, training=dropout > 0)
        return torch.matmul(w, v).transpose(1, 2), (w if self.need_weights else None)


class KernelAttention:
    """siglip2.kernels attention: packed varlen (cu_seqlens given) or padded with a boolean key mask."""

    def __init__(self, kernel_impl, cu_seqlens=None, max_seqlen=None, key_padding_mask=None):
        self.impl, self.cu, self.max_seqlen, self.key_mask = kernel_impl, cu_seqlens, max_seqlen, key_padding_mask

    def __call__(self, q, k, v, scale, dropout):
        if dropout > 0:
            raise NotImplementedError("the triton impl has no attention dropout; use impl='reference' to train with it")
        if self.cu is not None:  # q, k, v: (N, H, d)
            out = varlen_attention(q, k, v, self.cu, self.cu, self.max_seqlen, self.max_seqlen, scale, impl=self.impl)
            return out, None
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, d)
        return padded_attention(q, k, v, self.key_mask, scale, impl=self.impl).transpose(1, 2), None


def _additive_mask(mask, dtype, query_len=None):
    """(B, L) 0/1 key mask -> (B, 1, 1|Lq, L) additive mask (0 / finfo.min); None when nothing is masked."""
    if mask is None or bool(mask.bool().all()):
        return None
    m = mask.bool()[:, None, None, :]
    out = torch.zeros(m.shape, dtype=dtype, device=mask.device).masked_fill(~m, torch.finfo(dtype).min)
    return out if query_len is None else out.expand(-1, -1, query_len, -1)


# ----------------------------------------------------------------------------------------------
# Building blocks (names and state-dict keys identical to transformers)
# ----------------------------------------------------------------------------------------------

class Siglip2Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_dim, self.num_heads = config.hidden_size, config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scale, self.dropout = self.head_dim ** -0.5, config.attention_dropout
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, x, attend):  # x: (B, L, D) padded or (N, D) packed
        shape = (*x.shape[:-1], self.num_heads, self.head_dim)
        if isinstance(attend, KernelAttention):
            # one GEMM reads x once for q, k and v; the kernels take the strided (.., 3, H, d) views as they are
            w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
            b = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
            q, k, v = F.linear(x, w, b).view(*x.shape[:-1], 3, self.num_heads, self.head_dim).unbind(-3)
        else:  # transformers' three projections, for its exact numerics
            q, k, v = (p(x).view(shape) for p in (self.q_proj, self.k_proj, self.v_proj))
        out, weights = attend(q, k, v, self.scale, self.dropout if self.training else 0.0)
        return self.out_proj(out.reshape(x.shape)), weights


class Siglip2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.hidden_act != "gelu_pytorch_tanh":
            raise ValueError(f"hidden_act must be 'gelu_pytorch_tanh' (the SigLIP2 activation), got {config.hidden_act!r}")
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Siglip2EncoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = Siglip2Attention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Siglip2MLP(config)

    def forward(self, x, attend):
        h, weights = self.self_attn(self.layer_norm1(x), attend)
        x = x + h
        return x + self.mlp(self.layer_norm2(x)), weights


class Siglip2Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([Siglip2EncoderLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x, attend, output_hidden_states=False, output_attentions=False, unpack=None):
        keep = unpack or (lambda t: t)
        hidden, attns = ([keep(x)] if output_hidden_states else None), ([] if output_attentions else None)
        for layer in self.layers:
            x, w = layer(x, attend)
            if output_hidden_states:
                hidden.append(keep(x))
            if output_attentions and w is not None:
                attns.append(w)
        return x, (tuple(hidden) if hidden is not None else None), (tuple(attns) if attns is not None else None)


class Siglip2VisionEmbeddings(nn.Module):
    """Linear patch embedding on pre-patchified pixels + the learned position grid resized per image."""

    def __init__(self, config):
        super().__init__()
        self.patch_size, self.num_patches = config.patch_size, config.num_patches
        self.patch_embedding = nn.Linear(config.num_channels * self.patch_size ** 2, config.hidden_size)
        self.position_embedding_size = math.isqrt(self.num_patches)
        self.position_embedding = nn.Embedding(self.num_patches, config.hidden_size)

    def forward(self, pixel_values, spatial_shapes, *, impl="reference", kernel_impl="auto", cu_seqlens=None):
        w, b, pos = self.patch_embedding.weight, self.patch_embedding.bias, self.position_embedding.weight
        if impl == "reference":
            return reference.naflex_patch_embed(pixel_values, spatial_shapes, w, b, pos, cu_seqlens=cu_seqlens)
        return naflex_patch_embed(pixel_values, spatial_shapes, w, b, pos, cu_seqlens=cu_seqlens, impl=kernel_impl)


class SiglipVisionEmbeddings(nn.Module):
    """FixRes: Conv2d patch embedding + a fixed position table. The Conv2d equals a Linear on (py, px, c)-ordered
    patches, so the triton impl runs the same fused patch-embedding op as NaFlex with an identity resize."""

    def __init__(self, config):
        super().__init__()
        self.patch_size, self.image_size = config.patch_size, config.image_size
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, self.patch_size, self.patch_size)
        self.num_patches = self.num_positions = config.num_patches
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)

    def patchify(self, pixel_values):
        """(B, C, H, W) -> (B, (H/P)*(W/P), P*P*C) row-major patches, each ordered (py, px, c)."""
        B, C, H, W = pixel_values.shape
        P = self.patch_size
        x = pixel_values.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, (H // P) * (W // P), P * P * C)

    def forward(self, pixel_values, *, impl="reference", kernel_impl="auto"):
        if impl == "reference":
            x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
            return x + self.position_embedding.weight[None]
        g = math.isqrt(self.num_positions)
        conv = self.patch_embedding.weight
        weight = conv.permute(0, 2, 3, 1).reshape(conv.shape[0], -1)
        shapes = torch.tensor([[g, g]], device=pixel_values.device).expand(pixel_values.shape[0], 2)
        return naflex_patch_embed(self.patchify(pixel_values), shapes, weight, self.patch_embedding.bias,
                                  self.position_embedding.weight, impl=kernel_impl)


class Siglip2MultiheadAttentionPoolingHead(nn.Module):
    """Attention pooling with a learned probe (MAP head); nn.MultiheadAttention's packed in_proj layout."""

    def __init__(self, config):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Siglip2MLP(config)
        self.num_heads = config.num_attention_heads

    def forward(self, hidden, attention_mask=None, *, cu_seqlens=None, max_seqlen=None, kernel_impl="auto"):
        if cu_seqlens is None:
            # transformers' path: nn.MultiheadAttention math (q pre-scaled, softmax in the model dtype)
            B, L = hidden.shape[:2]
            probe = self.probe.expand(B, -1, -1)
            mask = _additive_mask(attention_mask, probe.dtype)
            if mask is not None:
                mask = mask.expand(-1, self.num_heads, 1, -1).reshape(B * self.num_heads, 1, L)
            x = self.attention(probe, hidden, hidden, attn_mask=mask)[0][:, 0]
        else:
            # packed: one query per image attends to that image's valid tokens (hidden: (N, D))
            B, D = cu_seqlens.shape[0] - 1, hidden.shape[-1]
            hd = D // self.num_heads
            w, b = self.attention.in_proj_weight, self.attention.in_proj_bias  # rows [Wq; Wk; Wv]
            q = F.linear(self.probe.reshape(1, D), w[:D], b[:D]).expand(B, D).reshape(B, self.num_heads, hd)
            # k and v in one GEMM over the packed tokens: (N, 2, H, hd) strided views
            k, v = F.linear(hidden, w[D:], b[D:]).view(-1, 2, self.num_heads, hd).unbind(1)
            cu_q = torch.arange(B + 1, dtype=torch.int32, device=hidden.device)
            o = varlen_attention(q.contiguous(), k, v, cu_q, cu_seqlens, 1, max_seqlen, impl=kernel_impl)
            x = self.attention.out_proj(o.reshape(B, D))
        return x + self.mlp(self.layernorm(x))


class Siglip2TextEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids, position_ids=None):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[-1], device=input_ids.device)[None]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)
