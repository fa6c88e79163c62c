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
import os
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

# absolute: siglip2.kernels is installed from the top-level kernels/ folder (see pyproject's package-dir), which a
# type checker can follow only by the package name (typings/siglip2/kernels), never by a relative path
from siglip2.kernels import sigmoid_loss

from ..checkpoints import loading
from .configuration import (
    ConfigLike,
    Siglip2Config,
    Siglip2TextConfig,
    Siglip2VisionConfig,
    SiglipConfig,
    SiglipTextConfig,
    SiglipVisionConfig,
    _Config,
    config_from_any,
)
from .layers import (  # noqa: F401
    Siglip2Attention,
    Siglip2Encoder,
    Siglip2EncoderLayer,
    Siglip2MLP,
    Siglip2MultiheadAttentionPoolingHead,
    Siglip2TextEmbeddings,
    Siglip2VisionEmbeddings,
    SiglipVisionEmbeddings,
    _additive_mask,
)
from .outputs import BaseModelOutputWithPooling, ImageClassifierOutput, Siglip2Output
from .packing import PackedBatch
from .validation import check_text_inputs, check_vision_inputs

if TYPE_CHECKING:
    from typing_extensions import Self

IMPLS = ("reference", "triton")


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class Siglip2PreTrainedModel(nn.Module):
    """Shared plumbing: config, impl selection, from_pretrained/save_pretrained, transformers-like init."""

    config_class: type[_Config] = Siglip2Config
    config: Any  # an instance of `config_class`; each model class declares its exact config type
    default_impl = "reference"
    checkpoint_prefix: str | None = None

    def __init__(self, config: ConfigLike, *, impl: str | None = None, kernel_impl: str = "auto") -> None:
        super().__init__()
        self.config = config_from_any(config, self.config_class)
        self.impl, self.kernel_impl = "reference", "auto"
        self._pending_impl = (impl or self.default_impl, kernel_impl)

    def _finish_init(self) -> None:
        self.set_impl(*self._pending_impl)
        if not any(p.is_meta for p in self.parameters()):
            self.apply(_init_weights)

    def set_impl(self, impl: str, kernel_impl: str = "auto") -> Self:
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
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> Self:
        """Load from a directory or hub id (config.json + model.safetensors, or a sharded index)."""
        return loading.load_pretrained(
            cls,
            name_or_path,
            revision=revision,
            dtype=dtype,
            device=device,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            **kwargs,
        )

    def save_pretrained(self, save_directory: str | os.PathLike, max_shard_size: int | str = 5 * 2**30) -> None:
        from ..checkpoints.saving import save_pretrained

        save_pretrained(self, save_directory, max_shard_size=max_shard_size)

    @property
    def _kernels(self) -> str | None:
        """The `kernel_impl` the blocks get: None runs transformers' eager math (impl "reference")."""
        return None if self.impl == "reference" else self.kernel_impl

    def _flags(
        self, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None, kwargs: dict
    ) -> tuple[bool, bool, bool]:
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward got unexpected keyword arguments: {sorted(kwargs)}")
        c = self.config
        return (
            c.output_attentions if output_attentions is None else output_attentions,
            c.output_hidden_states if output_hidden_states is None else output_hidden_states,
            c.return_dict if return_dict is None else return_dict,
        )


@torch.no_grad()
def _init_weights(m: nn.Module) -> None:
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
            x, hidden, attns = self.encoder(x, _additive_mask(mask, x.dtype, L), None, None, out_hidden, out_attn)
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
            mask = _additive_mask(attention_mask, x.dtype, x.shape[1])
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


class Siglip2Model(Siglip2PreTrainedModel):
    config_class = Siglip2Config
    config: Siglip2Config
    vision_class: type[Siglip2VisionModel] = Siglip2VisionModel
    text_class: type[Siglip2TextModel] = Siglip2TextModel

    def __init__(self, config: ConfigLike, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.text_model = self.text_class(self.config.text_config, **kw)
        self.vision_model = self.vision_class(self.config.vision_config, **kw)
        self.logit_scale = nn.Parameter(torch.randn(1))
        self.logit_bias = nn.Parameter(torch.randn(1))
        self._finish_init()

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Pooled text embeddings (B, projection_size), not normalized."""
        return self.text_model(input_ids, attention_mask, position_ids, return_dict=True, **kwargs).pooler_output

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Pooled image embeddings (B, D), not normalized."""
        return self.vision_model(
            pixel_values, pixel_attention_mask, spatial_shapes, return_dict=True, **kwargs
        ).pooler_output

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Siglip2Output | tuple:
        flags = self._flags(output_attentions, output_hidden_states, return_dict, kwargs)
        return self._dual_forward(
            input_ids,
            pixel_values,
            (pixel_attention_mask, spatial_shapes),
            attention_mask,
            position_ids,
            return_loss,
            *flags,
        )

    def _dual_forward(
        self,
        input_ids: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        vision_args: tuple,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        return_loss: bool | None,
        out_attn: bool,
        out_hidden: bool,
        return_dict: bool,
    ) -> Siglip2Output | tuple:
        if input_ids is None or pixel_values is None:
            raise ValueError(
                f"{type(self).__name__}.forward needs both input_ids and pixel_values "
                "(use get_text_features / get_image_features for one tower)"
            )
        flags = dict(output_attentions=out_attn, output_hidden_states=out_hidden, return_dict=True)
        text = self.text_model(input_ids, attention_mask, position_ids, **flags)
        vision = self.vision_model(pixel_values, *vision_args, **flags)
        image_embeds = vision.pooler_output / vision.pooler_output.norm(p=2, dim=-1, keepdim=True)
        text_embeds = text.pooler_output / text.pooler_output.norm(p=2, dim=-1, keepdim=True)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp() + self.logit_bias
        loss = None
        if return_loss:
            if text_embeds.shape[0] != image_embeds.shape[0]:
                raise ValueError(
                    f"return_loss needs as many texts as images (a square batch), got "
                    f"{text_embeds.shape[0]} texts and {image_embeds.shape[0]} images"
                )
            loss = self._loss(image_embeds, text_embeds, logits_per_text)
        out = Siglip2Output(loss, logits_per_text.t(), logits_per_text, text_embeds, image_embeds, text, vision)
        return out if return_dict else out.to_tuple()

    def _loss(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logits_per_text: torch.Tensor
    ) -> torch.Tensor:
        if self.impl == "reference":
            # transformers' formula verbatim (the float32 eye promotes half-precision logits to fp32)
            eye = torch.eye(logits_per_text.size(0), device=logits_per_text.device)
            loglik = F.logsigmoid((2 * eye - 1) * logits_per_text)
            return -torch.sum(loglik, dim=-1).mean()
        return sigmoid_loss(image_embeds, text_embeds, self.logit_scale, self.logit_bias, impl=self.kernel_impl)


class SiglipTextModel(Siglip2TextModel):
    config_class = SiglipTextConfig
    config: SiglipTextConfig


class SiglipModel(Siglip2Model):
    """FixRes SigLIP / SigLIP2 (model_type "siglip"): pixel_values (B, 3, H, W), no vision mask."""

    config_class = SiglipConfig
    config: SiglipConfig
    vision_class = SiglipVisionModel
    text_class = SiglipTextModel

    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs: Any
    ) -> torch.Tensor:
        """Pooled image embeddings (B, D), not normalized."""
        return self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        ).pooler_output

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Siglip2Output | tuple:
        """transformers' SiglipModel.forward argument order; pixel_values (B, 3, H, W) at the checkpoint's size."""
        if interpolate_pos_encoding:
            raise NotImplementedError("interpolate_pos_encoding (bicubic resize of the FixRes table) is not supported")
        flags = self._flags(output_attentions, output_hidden_states, return_dict, kwargs)
        return self._dual_forward(input_ids, pixel_values, (), attention_mask, position_ids, return_loss, *flags)


class Siglip2ForImageClassification(Siglip2PreTrainedModel):
    """Vision tower + linear classifier on the mean of the valid tokens of last_hidden_state."""

    config_class = Siglip2Config
    config: Siglip2Config

    def __init__(self, config: ConfigLike, **kw: Any) -> None:
        super().__init__(config, **kw)
        c = self.config
        self.vision_model = Siglip2VisionModel(c.vision_config, **kw)
        self.num_labels = c.num_labels
        self.classifier = nn.Linear(c.vision_config.hidden_size, c.num_labels) if c.num_labels > 0 else nn.Identity()
        self._finish_init()
        if isinstance(self.classifier, nn.Linear) and not any(p.is_meta for p in self.parameters()):
            nn.init.normal_(self.classifier.weight, std=c.vision_config.hidden_size**-0.5 * c.initializer_factor)

    fresh_on_load = ("classifier.",)  # fine-tuning from a Siglip2Model checkpoint: the head starts fresh
    ignore_on_load = ("text_model.", "logit_scale", "logit_bias")  # ... whose text tower is not used

    def init_fresh(self, device: torch.device | str) -> None:
        """Materialize and initialize the classifier after loading a checkpoint that has none (transformers' init)."""
        self.classifier.to_empty(device=device)
        if isinstance(self.classifier, nn.Linear):
            with torch.no_grad():
                nn.init.normal_(
                    self.classifier.weight,
                    std=self.config.vision_config.hidden_size**-0.5 * self.config.initializer_factor,
                )
                nn.init.zeros_(self.classifier.bias)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple:
        out_attn, out_hidden, return_dict = self._flags(output_attentions, output_hidden_states, return_dict, kwargs)
        vision = self.vision_model(
            pixel_values,
            pixel_attention_mask,
            spatial_shapes,
            output_attentions=out_attn,
            output_hidden_states=out_hidden,
            return_dict=True,
        )
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

    def _loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
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
