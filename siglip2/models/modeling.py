"""SigLIP2 (NaFlex) and SigLIP (FixRes) models: one module tree with transformers' exact attribute names.

Every model runs with one of two impls:
  "reference"  pure PyTorch on padded batches with masks, reproducing transformers' numerics (eager attention with
               fp32 softmax, the pooling head's softmax in the model dtype, padded query rows left unmasked);
  "triton"     packed NaFlex execution through siglip2.kernels: padding tokens are never computed, attention is
               varlen over `cu_seqlens`, the patch embedding and the position-grid resize are one fused op.
`siglip2.reference` and `siglip2.fast` export these classes bound to each impl; `model.set_impl(...)` switches.
This module holds the dual encoders (Siglip2Model, SiglipModel) and the classifier, and exports every model class:
the towers live in towers.py, the shared base (from_pretrained, save_pretrained, init) in pretrained.py.
In the packed impl the padded rows of `last_hidden_state`/`hidden_states` are zeros (transformers fills them with
finite values that depend on the padding; every valid token and every pooled output is identical either way).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# absolute: siglip2.kernels is installed from the top-level kernels/ folder (see pyproject's package-dir), which a
# type checker can follow only by the package name (typings/siglip2/kernels), never by a relative path
from siglip2.kernels import sigmoid_loss

from .configuration import ConfigLike, Siglip2Config, SiglipConfig
from .outputs import ImageClassifierOutput, Siglip2Output
from .pretrained import IMPLS, Siglip2PreTrainedModel
from .towers import Siglip2TextModel, Siglip2VisionModel, SiglipTextModel, SiglipVisionModel

__all__ = [
    "IMPLS",
    "Siglip2ForImageClassification",
    "Siglip2Model",
    "Siglip2PreTrainedModel",
    "Siglip2TextModel",
    "Siglip2VisionModel",
    "SiglipModel",
    "SiglipTextModel",
    "SiglipVisionModel",
]


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

    @torch.no_grad()
    def _init_weights(self, m: nn.Module) -> None:
        super()._init_weights(m)
        if isinstance(m, Siglip2Model):  # transformers starts the logit scale and bias at 0
            nn.init.zeros_(m.logit_scale)
            nn.init.zeros_(m.logit_bias)

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
