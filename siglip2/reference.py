"""The SigLIP2 / SigLIP model classes bound to the "reference" impl: pure PyTorch, padded with masks,
transformers' numerics. Same module tree and state dicts as `siglip2.fast`.

Each class is a subclass of its `siglip2.models.modeling` class (isinstance holds) whose default impl is "reference";
they are spelled out so that IDEs and type checkers resolve `from siglip2.reference import Siglip2Model`.
"""

from __future__ import annotations

from .models import modeling


class Siglip2Model(modeling.Siglip2Model):
    __doc__ = modeling.Siglip2Model.__doc__
    default_impl = "reference"


class Siglip2VisionModel(modeling.Siglip2VisionModel):
    __doc__ = modeling.Siglip2VisionModel.__doc__
    default_impl = "reference"


class Siglip2TextModel(modeling.Siglip2TextModel):
    __doc__ = modeling.Siglip2TextModel.__doc__
    default_impl = "reference"


class Siglip2ForImageClassification(modeling.Siglip2ForImageClassification):
    __doc__ = modeling.Siglip2ForImageClassification.__doc__
    default_impl = "reference"


class SiglipModel(modeling.SiglipModel):
    __doc__ = modeling.SiglipModel.__doc__
    default_impl = "reference"


class SiglipVisionModel(modeling.SiglipVisionModel):
    __doc__ = modeling.SiglipVisionModel.__doc__
    default_impl = "reference"


class SiglipTextModel(modeling.SiglipTextModel):
    __doc__ = modeling.SiglipTextModel.__doc__
    default_impl = "reference"


__all__ = [
    "Siglip2ForImageClassification",
    "Siglip2Model",
    "Siglip2TextModel",
    "Siglip2VisionModel",
    "SiglipModel",
    "SiglipTextModel",
    "SiglipVisionModel",
]
