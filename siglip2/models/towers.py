"""The encoder towers: Siglip2VisionModel (NaFlex), SiglipVisionModel (FixRes), Siglip2TextModel, SiglipTextModel.

Each runs impl "reference" (padded, masked, transformers' eager math) or "triton" (the vision towers pack the
valid tokens of all images into one sequence, `siglip2/models/packing.py`; the text tower runs the kernels on its
padded batch with a key mask). The dual encoders and the classifier that hold them are in modeling.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .configuration import ConfigLike, Siglip2TextConfig, Siglip2VisionConfig, SiglipTextConfig, SiglipVisionConfig
from .layers import (
    Siglip2Encoder,
    Siglip2MultiheadAttentionPoolingHead,
    Siglip2TextEmbeddings,
    Siglip2VisionEmbeddings,
    SiglipVisionEmbeddings,
    additive_mask,
)
from .outputs import BaseModelOutputWithPooling
from .packing import PackedBatch
from .pretrained import Siglip2PreTrainedModel
from .validation import check_text_inputs, check_vision_inputs


class Siglip2VisionModel(Siglip2PreTrainedModel):
    config_class = Siglip2VisionConfig
    config: Siglip2VisionConfig
    checkpoint_prefix = "vision_model."
    embeddings_class: type[nn.Module] = Siglip2VisionEmbeddings

    def __init__(self, config: ConfigLike, **kw: Any) -> None:
        super().__init__(config, **kw)
        c = self.config
        self.embeddings = self.embeddings_class(c)
        self.encoder = Siglip2Encoder(c)
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.use_head = c.vision_use_head
        if self.use_head:
            self.head = Siglip2MultiheadAttentionPoolingHead(c)
        self._finish_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        packed: PackedBatch | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling | tuple:
        """transformers' arguments; `packed` (impl "triton"): a PackedBatch the caller built for these inputs (from
        host-side shapes), which skips the entry's value checks and its host sync."""
        out_attn, out_hidden, return_dict = self._flags(output_attentions, output_hidden_states, return_dict, kwargs)
        if self.impl == "reference":
            packed = None
        if packed is None:
            shapes = check_vision_inputs(self.config, pixel_values, pixel_attention_mask, spatial_shapes)
            if shapes is None:  # compiling: the shapes stay a device tensor
                if spatial_shapes is None:  # (check_vision_inputs raised on this already)
                    raise ValueError("spatial_shapes (B, 2) is required with NaFlex pixel_values")
                shapes = spatial_shapes
            if self.impl == "triton":
                packed = PackedBatch.from_spatial_shapes(
                    shapes, pixel_values.shape[1], self.post_layernorm.weight.device, pixel_attention_mask
                )
        if self.impl == "reference":
            x = self.embeddings(pixel_values, spatial_shapes)
        else:
            x = self.embeddings(pixel_values, spatial_shapes, packed, self.kernel_impl)
        return self._encode(x, pixel_attention_mask, packed, out_attn, out_hidden, return_dict)

    def _encode(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        packed: PackedBatch | None,
        out_attn: bool,
        out_hidden: bool,
        return_dict: bool,
    ) -> BaseModelOutputWithPooling | tuple:
        if packed is None:  # reference: padded, transformers' eager math
            L = x.shape[1]
            x, hidden, attns = self.encoder(x, additive_mask(mask, x.dtype, L), None, None, out_hidden, out_attn)
            last = self.post_layernorm(x)
            pooled = self.head(last, mask) if self.use_head else None
        else:  # packed: padding tokens never enter the encoder
            x, hidden, _ = self.encoder(x, None, packed, self.kernel_impl, out_hidden)
            x = self.post_layernorm(x)
            pooled = self.head(x, None, packed, self.kernel_impl) if self.use_head else None
            last, attns = packed.unpack(x), (() if out_attn else None)  # kernels never materialize attention weights
        out = BaseModelOutputWithPooling(last, pooled, hidden, attns)
        return out if return_dict else out.to_tuple()


class SiglipVisionModel(Siglip2VisionModel):
    """FixRes vision tower: (B, 3, H, W) pixels at the checkpoint's image_size, no padding."""

    config_class = SiglipVisionConfig
    config: SiglipVisionConfig  # FixRes: not a Siglip2VisionConfig
    embeddings_class = SiglipVisionEmbeddings

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling | tuple:
        if interpolate_pos_encoding:
            raise NotImplementedError("interpolate_pos_encoding (bicubic resize of the FixRes table) is not supported")
        out_attn, out_hidden, return_dict = self._flags(output_attentions, output_hidden_states, return_dict, kwargs)
        check_vision_inputs(self.config, pixel_values, None, None, fixres=True)
        packed = None
        if self.impl == "triton":  # every image is the same full grid: shapes known on the host, nothing to sync
            g = math.isqrt(self.config.num_patches)
            packed = PackedBatch.from_spatial_shapes(
                [(g, g)] * pixel_values.shape[0], g * g, self.post_layernorm.weight.device
            )
        x = self.embeddings(pixel_values, packed, self._kernels)
        return self._encode(x, None, packed, out_attn, out_hidden, return_dict)


class Siglip2TextModel(Siglip2PreTrainedModel):
    config_class = Siglip2TextConfig
    config: Siglip2TextConfig
    checkpoint_prefix = "text_model."

    def __init__(self, config: ConfigLike, **kw: Any) -> None:
        super().__init__(config, **kw)
        c = self.config
        self.embeddings = Siglip2TextEmbeddings(c)
        self.encoder = Siglip2Encoder(c)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        if c.projection_size is None:  # the config resolves None to hidden_size when built; set to None by hand since
            raise ValueError("Siglip2TextConfig.projection_size must be an int, got None (call config.validate())")
        self.head = nn.Linear(c.hidden_size, c.projection_size)
        self._finish_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling | tuple:
        out_attn, out_hidden, return_dict = self._flags(output_attentions, output_hidden_states, return_dict, kwargs)
        input_ids = check_text_inputs(self.config, input_ids, attention_mask, position_ids)
        input_ids = input_ids.reshape(-1, input_ids.shape[-1])
        x = self.embeddings(input_ids, position_ids)
        if self.impl == "reference":
            mask = additive_mask(attention_mask, x.dtype, x.shape[1])
        else:
            mask = None if attention_mask is None else attention_mask.bool()
        x, hidden, attns = self.encoder(x, mask, None, self._kernels, out_hidden, out_attn)
        if self.impl != "reference" and out_attn:
            attns = ()
        last = self.final_layer_norm(x)
        # the pooled token is the last position, whatever it holds (usually <pad>): SigLIP was trained that way
        pooled = self.head(last[:, -1, :])
        out = BaseModelOutputWithPooling(last, pooled, hidden, attns)
        return out if return_dict else out.to_tuple()


class SiglipTextModel(Siglip2TextModel):
    config_class = SiglipTextConfig
    config: SiglipTextConfig
