"""The SigLIP2 / SigLIP model classes bound to the "triton" impl: packed NaFlex execution through siglip2.kernels
(varlen attention over cu_seqlens, fused patch embedding + position resize, fused sigmoid loss).

A drop-in for transformers: `from siglip2.fast import Siglip2Model`. The kernels run compiled on CUDA tensors; on
CPU the same packed path runs the kernels' PyTorch references (or the Triton interpreter with TRITON_INTERPRET=1).
`register()` / `patch_transformers(model)` bring the same kernels into a model loaded with transformers
(siglip2.integrations.transformers). Each class subclasses its `siglip2.models.modeling` class (isinstance holds).
"""

from __future__ import annotations

from .integrations.transformers import patch_transformers, register, unpatch_transformers
from .models import modeling
from .models.packing import PackedBatch


class Siglip2Model(modeling.Siglip2Model):
    __doc__ = modeling.Siglip2Model.__doc__
    default_impl = "triton"


class Siglip2VisionModel(modeling.Siglip2VisionModel):
    __doc__ = modeling.Siglip2VisionModel.__doc__
    default_impl = "triton"


class Siglip2TextModel(modeling.Siglip2TextModel):
    __doc__ = modeling.Siglip2TextModel.__doc__
    default_impl = "triton"


class Siglip2ForImageClassification(modeling.Siglip2ForImageClassification):
    __doc__ = modeling.Siglip2ForImageClassification.__doc__
    default_impl = "triton"


class SiglipModel(modeling.SiglipModel):
    __doc__ = modeling.SiglipModel.__doc__
    default_impl = "triton"


class SiglipVisionModel(modeling.SiglipVisionModel):
    __doc__ = modeling.SiglipVisionModel.__doc__
    default_impl = "triton"


class SiglipTextModel(modeling.SiglipTextModel):
    __doc__ = modeling.SiglipTextModel.__doc__
    default_impl = "triton"


__all__ = [
    "PackedBatch",
    "Siglip2ForImageClassification",
    "Siglip2Model",
    "Siglip2TextModel",
    "Siglip2VisionModel",
    "SiglipModel",
    "SiglipTextModel",
    "SiglipVisionModel",
    "patch_transformers",
    "register",
    "unpatch_transformers",
]
