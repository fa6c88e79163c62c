"""SigLIP2 building blocks with transformers' attribute names and state-dict keys.

Every block runs one of three ways, chosen by two arguments that the models pass down unchanged:
  kernel_impl=None                 transformers' eager math on padded (B, L, D) tokens; `mask` is additive
  kernel_impl=str, packed=None     siglip2.kernels on padded tokens; `mask` is a bool (B, L) key mask (text tower)
  kernel_impl=str, packed=Packed   siglip2.kernels on packed (N, D) tokens: varlen attention over packed.cu_seqlens
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from siglip2.kernels import naflex_patch_embed, padded_attention, reference, varlen_attention


def additive_mask(mask, dtype, query_len=None):
    """(B, L) 0/1 key mask -> (B, 1, 1|Lq, L) additive mask (0 / finfo.min); None when nothing is masked."""
    if mask is None or bool(mask.bool().all()):
        return None
    m = mask.bool()[:, None, None, :]
    out = torch.zeros(m.shape, dtype=dtype, device=mask.device).masked_fill(~m, torch.finfo(dtype).min)
    return out if query_len is None else out.expand(-1, -1, query_len, -1)


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _refuse_hooks(m: nn.Module, name: str) -> None:
    """For a module whose parameters a fused op reads without calling it: its hooks would never run."""
    if _has_hooks(m):
        raise NotImplementedError(
            f"{name} has hooks, but this path reads its parameters in a fused op and never calls it, so they would "
            f"not run; register them on the enclosing module instead"
        )


# ----------------------------------------------------------------------------------------------
# Building blocks (names and state-dict keys identical to transformers)
# ----------------------------------------------------------------------------------------------


class Siglip2Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_dim, self.num_heads = config.hidden_size, config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scale, self.dropout = self.head_dim**-0.5, config.attention_dropout
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, x, mask=None, packed=None, kernel_impl=None, need_weights=False):
        if kernel_impl is None:  # transformers' eager path: three projections, fp32 softmax, weights returnable
            shape = (*x.shape[:-1], self.num_heads, self.head_dim)
            q, k, v = (p(x).view(shape).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
            w = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            if mask is not None:
                w = w + mask
            w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
            w = F.dropout(w, p=self.dropout, training=self.training)
            out = torch.matmul(w, v).transpose(1, 2)
            return self.out_proj(out.reshape(x.shape)), (w if need_weights else None)
        if self.training and self.dropout > 0:
            raise NotImplementedError("the triton impl has no attention dropout; use impl='reference' to train with it")
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if _has_hooks(self.q_proj) or _has_hooks(self.k_proj) or _has_hooks(self.v_proj):
            # the fused GEMM never calls the projections, so their hooks would not run (torch.nn.utils.prune's
            # pre-hook recomputes .weight from weight_orig there; capture hooks would see nothing)
            q, k, v = (p(x).view(*x.shape[:-1], self.num_heads, self.head_dim) for p in projs)
        else:
            # one GEMM reads x once for q, k and v; the kernels take the strided (.., 3, H, d) views as they are
            w, b = self._fused_qkv()
            q, k, v = F.linear(x, w, b).view(*x.shape[:-1], 3, self.num_heads, self.head_dim).unbind(-3)
        if packed is not None:  # (N, H, d)
            L = packed.max_seqlen
            out = varlen_attention(
                q, k, v, packed.cu_seqlens, packed.cu_seqlens, L, L, self.scale, impl=kernel_impl, check_values=False
            )
        else:  # (B, L, H, d) -> the kernel's (B, H, L, d) strided view
            out = padded_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, self.scale, impl=kernel_impl
            ).transpose(1, 2)
        return self.out_proj(out.reshape(x.shape)), None

    def _fused_qkv(self):
        """[Wq; Wk; Wv] and [bq; bk; bv], concatenated on every forward, with or without autograd.

        No cache: nothing cheap tells a stale fused copy from a fresh one. `p.data` has its own version counter,
        so `p.data.copy_(ema)`, `p.data.zero_()`, pruning or a LoRA merge leave (data_ptr, _version) unchanged, and
        comparing values would read more than the cat writes. The cat reads and writes 3*D^2 elements per layer:
        B/16 (D=768, bf16) 3.5 MB each way, 7.1 MB in all, So400m (D=1152) 15.9 MB, against the layer's own weight
        reads of 14.2 MB / 30.4 MB (4 D^2 + 2 D I, I the MLP width): +50% of the weight traffic at batch 1, about 3%
        of a layer's traffic at 8k tokens; and no fused copy held in memory (the cache kept 215 MB for So400m).
        On 1 CPU thread, fp32, one 256-token image: the cat alone takes 0.49 ms (B/16)
        / 1.1 ms (So400m), against 41-43 ms / 62-75 ms per layer forward with or without the old cache (medians of
        20 runs, the difference within the noise of a shared machine)."""
        q, k, v = self.q_proj, self.k_proj, self.v_proj
        return torch.cat((q.weight, k.weight, v.weight)), torch.cat((q.bias, k.bias, v.bias))


class Siglip2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.hidden_act != "gelu_pytorch_tanh":
            raise ValueError(
                f"hidden_act must be 'gelu_pytorch_tanh' (the SigLIP2 activation), got {config.hidden_act!r}"
            )
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

    def forward(self, x, mask=None, packed=None, kernel_impl=None, need_weights=False):
        h, weights = self.self_attn(self.layer_norm1(x), mask, packed, kernel_impl, need_weights)
        x = x + h
        return x + self.mlp(self.layer_norm2(x)), weights


class Siglip2Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([Siglip2EncoderLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x, mask=None, packed=None, kernel_impl=None, output_hidden_states=False, output_attentions=False):
        """Returns (x, hidden_states, attentions); packed hidden states are unpacked to (B, L, D)."""
        keep = packed.unpack if packed is not None else (lambda t: t)
        hidden: list[torch.Tensor] | None = [keep(x)] if output_hidden_states else None
        attns: list[torch.Tensor] | None = [] if output_attentions else None
        for layer in self.layers:
            x, w = layer(x, mask, packed, kernel_impl, output_attentions)
            if hidden is not None:
                hidden.append(keep(x))
            if attns is not None and w is not None:
                attns.append(w)
        return x, (tuple(hidden) if hidden is not None else None), (tuple(attns) if attns is not None else None)


class Siglip2VisionEmbeddings(nn.Module):
    """Linear patch embedding on pre-patchified pixels + the learned position grid resized per image."""

    def __init__(self, config):
        super().__init__()
        self.patch_size, self.num_patches = config.patch_size, config.num_patches
        self.patch_embedding = nn.Linear(config.num_channels * self.patch_size**2, config.hidden_size)
        self.position_embedding_size = math.isqrt(self.num_patches)
        self.position_embedding = nn.Embedding(self.num_patches, config.hidden_size)

    def forward(self, pixel_values, spatial_shapes, packed=None, kernel_impl=None):
        """(B, L, D) padded embeddings; packed (N, D) valid tokens when `packed` has padding to drop."""
        _refuse_hooks(self.patch_embedding, "embeddings.patch_embedding")
        w, b, pos = self.patch_embedding.weight, self.patch_embedding.bias, self.position_embedding.weight
        if kernel_impl is None:
            return reference.naflex_patch_embed(pixel_values, spatial_shapes, w, b, pos)
        return _packed_patch_embed(pixel_values, packed, w, b, pos, kernel_impl)


def _packed_patch_embed(pixel_values, packed, weight, bias, pos, kernel_impl):
    # host-side shapes and prefix sums: the op reads them without a device sync and skips the value checks that
    # the model's entry check already did
    cu = packed.cu_seqlens_host() if packed.valid is not None else None
    x = naflex_patch_embed(
        pixel_values,
        packed.spatial_shapes,
        weight,
        bias,
        pos,
        cu_seqlens=cu,
        num_tokens=packed.total if cu is not None else None,
        impl=kernel_impl,
        check_values=False,
    )
    return x if cu is not None else x.reshape(-1, x.shape[-1])


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

    def forward(self, pixel_values, packed=None, kernel_impl=None):
        if kernel_impl is None:
            x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
            return x + self.position_embedding.weight[None]
        _refuse_hooks(self.patch_embedding, "embeddings.patch_embedding")
        conv = self.patch_embedding.weight
        weight = conv.permute(0, 2, 3, 1).reshape(conv.shape[0], -1)
        return _packed_patch_embed(
            self.patchify(pixel_values),
            packed,
            weight,
            self.patch_embedding.bias,
            self.position_embedding.weight,
            kernel_impl,
        )


class Siglip2MultiheadAttentionPoolingHead(nn.Module):
    """Attention pooling with a learned probe (MAP head); nn.MultiheadAttention's packed in_proj layout."""

    def __init__(self, config):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Siglip2MLP(config)
        self.num_heads = config.num_attention_heads

    def forward(self, hidden, attention_mask=None, packed=None, kernel_impl=None):
        if packed is None:
            # transformers' path: nn.MultiheadAttention math (q pre-scaled, softmax in the model dtype)
            B, L = hidden.shape[:2]
            # repeat (a copy), as transformers: F.linear of an expanded (stride-0) probe skips the fused bias GEMM
            # and rounds the q projection twice in bf16 (matmul, then + bias), one bf16 ulp off transformers
            probe = self.probe.repeat(B, 1, 1)
            mask = additive_mask(attention_mask, probe.dtype)
            if mask is not None:
                mask = mask.expand(-1, self.num_heads, 1, -1).reshape(B * self.num_heads, 1, L)
            x = self.attention(probe, hidden, hidden, attn_mask=mask)[0][:, 0]
        else:
            # packed: one query per image attends to that image's valid tokens (hidden: (N, D))
            if kernel_impl is None:
                raise ValueError("Siglip2MultiheadAttentionPoolingHead: packed tokens need a kernel_impl, got None")
            _refuse_hooks(self.attention, "head.attention")
            B, D = packed.batch_size, hidden.shape[-1]
            hd = D // self.num_heads
            w, b = self.attention.in_proj_weight, self.attention.in_proj_bias  # rows [Wq; Wk; Wv]
            q = F.linear(self.probe.reshape(1, D), w[:D], b[:D]).expand(B, D).reshape(B, self.num_heads, hd)
            # k and v in one GEMM over the packed tokens: (N, 2, H, hd) strided views
            k, v = F.linear(hidden, w[D:], b[D:]).view(-1, 2, self.num_heads, hd).unbind(1)
            o = varlen_attention(
                q.contiguous(),
                k,
                v,
                packed.probe_cu_seqlens,
                packed.cu_seqlens,
                1,
                packed.max_seqlen,
                impl=kernel_impl,
                check_values=False,
            )
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
