"""SigLIP2 (NaFlex) and SigLIP (FixRes) models: one module tree with transformers' exact attribute names.

Every model runs with one of two impls:
  "reference"  pure PyTorch on padded batches with masks, reproducing transformers' numerics (eager attention with
               fp32 softmax, the pooling head's softmax in the model dtype, padded query rows left unmasked);
  "triton"     packed NaFlex execution through siglip2.kernels: padding tokens are never computed, attention is
               varlen over `cu_seqlens`, the patch embedding and the position-grid resize are one fused op.
`siglip2.reference` and `siglip2.fast` export these classes bound to each impl; `model.set_impl(...)` switches.
In the packed impl the padded rows of `last_hidden_state`/`hidden_states` are zeros (transformers fills them with
finite values that depend on the padding; every valid token and every pooled output is identical either way).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import loading
from .configuration import (Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig, SiglipConfig, SiglipTextConfig,
                            SiglipVisionConfig, config_from_any)
from .outputs import BaseModelOutputWithPooling, ImageClassifierOutput, Siglip2Output
from .validation import check_text_inputs, check_vision_inputs

IMPLS = ("reference", "triton")


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
        from .kernels.attention import padded_attention, varlen_attention

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
            from .kernels import reference

            return reference.naflex_patch_embed(pixel_values, spatial_shapes, w, b, pos, cu_seqlens=cu_seqlens)
        from .kernels.patch_embed import naflex_patch_embed

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
        from .kernels.patch_embed import naflex_patch_embed

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
            from .kernels.attention import varlen_attention

            B, D = cu_seqlens.shape[0] - 1, hidden.shape[-1]
            hd = D // self.num_heads
            wq, wk, wv = self.attention.in_proj_weight.chunk(3)
            bq, bk, bv = self.attention.in_proj_bias.chunk(3)
            q = F.linear(self.probe.reshape(1, D), wq, bq).expand(B, D).reshape(B, self.num_heads, hd)
            k = F.linear(hidden, wk, bk).view(-1, self.num_heads, hd)
            v = F.linear(hidden, wv, bv).view(-1, self.num_heads, hd)
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


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

class Siglip2PreTrainedModel(nn.Module):
    """Shared plumbing: config, impl selection, from_pretrained/save_pretrained, transformers-like init."""

    config_class = Siglip2Config
    default_impl = "reference"
    checkpoint_prefix = None

    def __init__(self, config, *, impl=None, kernel_impl="auto"):
        super().__init__()
        self.config = config_from_any(config, self.config_class)
        self.impl, self.kernel_impl = "reference", "auto"
        self._pending_impl = (impl or self.default_impl, kernel_impl)

    def _finish_init(self):
        self.set_impl(*self._pending_impl)
        if not any(p.is_meta for p in self.parameters()):
            self.apply(_init_weights)

    def set_impl(self, impl: str, kernel_impl: str = "auto"):
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
    def from_pretrained(cls, name_or_path, *, revision=None, dtype=None, device=None, cache_dir=None,
                        local_files_only=False, **kwargs):
        """Load from a directory or hub id (config.json + model.safetensors, or a sharded index)."""
        return loading.load_pretrained(cls, name_or_path, revision=revision, dtype=dtype, device=device,
                                       cache_dir=cache_dir, local_files_only=local_files_only, **kwargs)

    def save_pretrained(self, save_directory, max_shard_size: int = 5 * 2**30):
        loading.save_pretrained(self, save_directory, max_shard_size=max_shard_size)

    def _flags(self, output_attentions, output_hidden_states, return_dict, kwargs):
        kwargs.pop("interpolate_pos_encoding", None) if not kwargs.get("interpolate_pos_encoding") else None
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward got unexpected keyword arguments: {sorted(kwargs)}")
        c = self.config
        return (c.output_attentions if output_attentions is None else output_attentions,
                c.output_hidden_states if output_hidden_states is None else output_hidden_states,
                c.return_dict if return_dict is None else return_dict)


@torch.no_grad()
def _init_weights(m):
    # transformers' initialisation, so randomly initialised models train like upstream ones
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
    elif isinstance(m, Siglip2Model):
        nn.init.zeros_(m.logit_scale)
        nn.init.zeros_(m.logit_bias)


def _unpacker(mask, B, L):
    """Packed (N, D) -> padded (B, L, D) with zeros at padding, without a host sync (masked_scatter)."""
    valid = mask.bool()[..., None]
    return lambda t: torch.zeros(B, L, t.shape[-1], dtype=t.dtype, device=t.device).masked_scatter(valid, t)


class Siglip2VisionModel(Siglip2PreTrainedModel):
    config_class = Siglip2VisionConfig
    checkpoint_prefix = "vision_model."
    embeddings_class = Siglip2VisionEmbeddings

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        c = self.config
        self.embeddings = self.embeddings_class(c)
        self.encoder = Siglip2Encoder(c)
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.use_head = c.vision_use_head
        if self.use_head:
            self.head = Siglip2MultiheadAttentionPoolingHead(c)
        self._finish_init()

    def forward(self, pixel_values, pixel_attention_mask=None, spatial_shapes=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out_attn, out_hidden, return_dict = self._flags(output_attentions, output_hidden_states, return_dict, kwargs)
        check_vision_inputs(self.config, pixel_values, pixel_attention_mask, spatial_shapes)

        def embed(cu_seqlens):
            return self.embeddings(pixel_values, spatial_shapes, impl=self.impl, kernel_impl=self.kernel_impl,
                                   cu_seqlens=cu_seqlens)

        B, L = pixel_values.shape[:2]
        return self._encode(embed, B, L, pixel_attention_mask, out_attn, out_hidden, return_dict)

    def _encode(self, embed, B, L, mask, out_attn, out_hidden, return_dict):
        """embed(cu_seqlens) -> (B, L, D) padded embeddings, or (N, D) packed valid tokens when cu_seqlens is given."""
        if self.impl == "reference":
            x = embed(None)
            attend = EagerAttention(_additive_mask(mask, x.dtype, L), need_weights=out_attn)
            x, hidden, attns = self.encoder(x, attend, out_hidden, out_attn)
            last = self.post_layernorm(x)
            pooled = self.head(last, mask) if self.use_head else None
        else:
            # packed: padding tokens never enter the encoder; with no mask every token is valid
            device = self.post_layernorm.weight.device
            lengths = mask.sum(1) if mask is not None else torch.full((B,), L, device=device)
            cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
            x = embed(cu) if mask is not None else embed(None).reshape(B * L, -1)
            unpack = _unpacker(mask, B, L) if mask is not None else (lambda t: t.reshape(B, L, -1))
            attend = KernelAttention(self.kernel_impl, cu_seqlens=cu, max_seqlen=L)
            x, hidden, _ = self.encoder(x, attend, out_hidden, False, unpack)
            x = self.post_layernorm(x)
            pooled = self.head(x, cu_seqlens=cu, max_seqlen=L, kernel_impl=self.kernel_impl) if self.use_head else None
            last, attns = unpack(x), (() if out_attn else None)  # kernels never materialize attention weights
        out = BaseModelOutputWithPooling(last, pooled, hidden, attns)
        return out if return_dict else out.to_tuple()


class SiglipVisionModel(Siglip2VisionModel):
    """FixRes vision tower: (B, 3, H, W) pixels at the checkpoint's image_size, no padding."""

    config_class = SiglipVisionConfig
    embeddings_class = SiglipVisionEmbeddings

    def forward(self, pixel_values, output_attentions=None, output_hidden_states=None, return_dict=None,
                interpolate_pos_encoding=False, **kwargs):
        if interpolate_pos_encoding:
            raise NotImplementedError("interpolate_pos_encoding (bicubic resize of the FixRes table) is not supported")
        out_attn, out_hidden, return_dict = self._flags(output_attentions, output_hidden_states, return_dict, kwargs)
        check_vision_inputs(self.config, pixel_values, None, None, fixres=True)

        def embed(cu_seqlens):
            return self.embeddings(pixel_values, impl=self.impl, kernel_impl=self.kernel_impl)

        return self._encode(embed, pixel_values.shape[0], self.config.num_patches, None, out_attn, out_hidden,
                            return_dict)


class Siglip2TextModel(Siglip2PreTrainedModel):
    config_class = Siglip2TextConfig
    checkpoint_prefix = "text_model."

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        c = self.config
        self.embeddings = Siglip2TextEmbeddings(c)
        self.encoder = Siglip2Encoder(c)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.head = nn.Linear(c.hidden_size, c.projection_size)
        self._finish_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out_attn, out_hidden, return_dict = self._flags(output_attentions, output_hidden_states, return_dict, kwargs)
        check_text_inputs(self.config, input_ids, attention_mask, position_ids)
        input_ids = input_ids.reshape(-1, input_ids.shape[-1])
        x = self.embeddings(input_ids, position_ids)
        if self.impl == "reference":
            attend = EagerAttention(_additive_mask(attention_mask, x.dtype, x.shape[1]), need_weights=out_attn)
        else:
            key_mask = None if attention_mask is None else attention_mask.bool()
            attend = KernelAttention(self.kernel_impl, key_padding_mask=key_mask)
        x, hidden, attns = self.encoder(x, attend, out_hidden, out_attn)
        if self.impl != "reference" and out_attn:
            attns = ()
        last = self.final_layer_norm(x)
        # the pooled token is the last position, whatever it holds (usually <pad>): SigLIP was trained that way
        pooled = self.head(last[:, -1, :])
        out = BaseModelOutputWithPooling(last, pooled, hidden, attns)
        return out if return_dict else out.to_tuple()


class Siglip2Model(Siglip2PreTrainedModel):
    config_class = Siglip2Config
    vision_class, text_class = Siglip2VisionModel, Siglip2TextModel

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        self.text_model = self.text_class(self.config.text_config, **kw)
        self.vision_model = self.vision_class(self.config.vision_config, **kw)
        self.logit_scale = nn.Parameter(torch.randn(1))
        self.logit_bias = nn.Parameter(torch.randn(1))
        self._finish_init()

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        """Pooled text embeddings (B, projection_size), not normalized."""
        return self.text_model(input_ids, attention_mask, position_ids, return_dict=True, **kwargs).pooler_output

    def get_image_features(self, pixel_values, pixel_attention_mask=None, spatial_shapes=None, **kwargs):
        """Pooled image embeddings (B, D), not normalized."""
        return self.vision_model(pixel_values, *self._vision_args(pixel_attention_mask, spatial_shapes),
                                 return_dict=True, **kwargs).pooler_output

    def _vision_args(self, pixel_attention_mask, spatial_shapes):
        return (pixel_attention_mask, spatial_shapes)

    def forward(self, input_ids=None, pixel_values=None, pixel_attention_mask=None, spatial_shapes=None,
                attention_mask=None, position_ids=None, return_loss=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out_attn, out_hidden, return_dict = self._flags(output_attentions, output_hidden_states, return_dict, kwargs)
        if input_ids is None or pixel_values is None:
            raise ValueError("Siglip2Model.forward needs both input_ids and pixel_values "
                             "(use get_text_features / get_image_features for one tower)")
        flags = dict(output_attentions=out_attn, output_hidden_states=out_hidden, return_dict=True)
        text = self.text_model(input_ids, attention_mask, position_ids, **flags)
        vision = self.vision_model(pixel_values, *self._vision_args(pixel_attention_mask, spatial_shapes), **flags)
        image_embeds = vision.pooler_output / vision.pooler_output.norm(p=2, dim=-1, keepdim=True)
        text_embeds = text.pooler_output / text.pooler_output.norm(p=2, dim=-1, keepdim=True)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp() + self.logit_bias
        loss = None
        if return_loss:
            if text_embeds.shape[0] != image_embeds.shape[0]:
                raise ValueError(f"return_loss needs as many texts as images (a square batch), got "
                                 f"{text_embeds.shape[0]} texts and {image_embeds.shape[0]} images")
            loss = self._loss(image_embeds, text_embeds, logits_per_text)
        out = Siglip2Output(loss, logits_per_text.t(), logits_per_text, text_embeds, image_embeds, text, vision)
        return out if return_dict else out.to_tuple()

    def _loss(self, image_embeds, text_embeds, logits_per_text):
        if self.impl == "reference":
            # transformers' formula verbatim (the float32 eye promotes half-precision logits to fp32)
            eye = torch.eye(logits_per_text.size(0), device=logits_per_text.device)
            loglik = F.logsigmoid((2 * eye - 1) * logits_per_text)
            return -torch.sum(loglik, dim=-1).mean()
        from .kernels.loss import sigmoid_loss

        return sigmoid_loss(image_embeds, text_embeds, self.logit_scale, self.logit_bias, impl=self.kernel_impl)


class SiglipTextModel(Siglip2TextModel):
    config_class = SiglipTextConfig


class SiglipModel(Siglip2Model):
    """FixRes SigLIP / SigLIP2 (model_type "siglip"): pixel_values (B, 3, H, W), no vision mask."""

    config_class = SiglipConfig
    vision_class, text_class = SiglipVisionModel, SiglipTextModel

    def _vision_args(self, pixel_attention_mask, spatial_shapes):
        if pixel_attention_mask is not None or spatial_shapes is not None:
            raise ValueError("SiglipModel (FixRes) takes no pixel_attention_mask or spatial_shapes")
        return ()


class Siglip2ForImageClassification(Siglip2PreTrainedModel):
    """Vision tower + linear classifier on the mean of the valid tokens of last_hidden_state."""

    config_class = Siglip2Config

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        c = self.config
        self.vision_model = Siglip2VisionModel(c.vision_config, **kw)
        self.num_labels = c.num_labels
        self.classifier = nn.Linear(c.vision_config.hidden_size, c.num_labels) if c.num_labels > 0 else nn.Identity()
        self._finish_init()
        if c.num_labels > 0 and not any(p.is_meta for p in self.parameters()):
            nn.init.normal_(self.classifier.weight, std=c.vision_config.hidden_size ** -0.5 * c.initializer_factor)

    def forward(self, pixel_values=None, pixel_attention_mask=None, spatial_shapes=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        out_attn, out_hidden, return_dict = self._flags(output_attentions, output_hidden_states, return_dict, kwargs)
        vision = self.vision_model(pixel_values, pixel_attention_mask, spatial_shapes, output_attentions=out_attn,
                                   output_hidden_states=out_hidden, return_dict=True)
        seq = vision.last_hidden_state
        if pixel_attention_mask is not None:
            m = pixel_attention_mask[..., None].to(seq.device)
            pooled = torch.sum(seq * m, dim=1) / torch.sum(m, dim=1)
        else:
            pooled = seq.mean(dim=1)
        logits = self.classifier(pooled)
        loss = None if labels is None else self._loss(labels, logits)
        out = ImageClassifierOutput(loss, logits, vision.hidden_states, vision.attentions)
        return out if return_dict else out.to_tuple()

    def _loss(self, labels, logits):
        """transformers' ForSequenceClassificationLoss: problem_type inferred once and written into the config."""
        c, labels = self.config, labels.to(logits.device)
        if c.problem_type is None:
            if self.num_labels == 1:
                c.problem_type = "regression"
            elif self.num_labels > 1 and labels.dtype in (torch.long, torch.int):
                c.problem_type = "single_label_classification"
            else:
                c.problem_type = "multi_label_classification"
        if c.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(), labels.squeeze())
            return F.mse_loss(logits, labels)
        if c.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1), ignore_index=-100)
        return F.binary_cross_entropy_with_logits(logits, labels)
