"""siglip2-triton: a kernel-optimized SigLIP2 (NaFlex) and SigLIP (FixRes), drop-in for transformers' models.

`from siglip2.fast import Siglip2Model` runs the Triton kernels; `siglip2.reference` is the pure-PyTorch twin.
Importing this package needs neither Triton nor a GPU.
"""

from typing import TYPE_CHECKING, Any

from .checkpoints.loading import CheckpointError
from .models.configuration import (
    Siglip2Config,
    Siglip2TextConfig,
    Siglip2VisionConfig,
    SiglipConfig,
    SiglipTextConfig,
    SiglipVisionConfig,
)

if TYPE_CHECKING:  # loaded lazily by __getattr__ below; imported here so type checkers see the names
    from .pipeline import embed, zero_shot_classify
    from .processing.image_processing import Siglip2ImageProcessor, SiglipImageProcessor
    from .processing.processor import Siglip2Processor, SiglipProcessor
    from .processing.tokenization import Siglip2Tokenizer

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # lazy, so `import siglip2` stays light (no PIL/tokenizers/model import until used)
    if name in ("zero_shot_classify", "embed"):
        from . import pipeline

        return getattr(pipeline, name)
    if name in ("Siglip2ImageProcessor", "SiglipImageProcessor"):
        from .processing import image_processing

        return getattr(image_processing, name)
    if name == "Siglip2Tokenizer":
        from .processing import tokenization

        return getattr(tokenization, name)
    if name in ("Siglip2Processor", "SiglipProcessor"):
        from .processing import processor

        return getattr(processor, name)
    raise AttributeError(f"module 'siglip2' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "Siglip2Config",
    "Siglip2ImageProcessor",
    "Siglip2Processor",
    "Siglip2TextConfig",
    "Siglip2Tokenizer",
    "Siglip2VisionConfig",
    "SiglipConfig",
    "SiglipImageProcessor",
    "SiglipProcessor",
    "SiglipTextConfig",
    "SiglipVisionConfig",
    "embed",
    "zero_shot_classify",
]
