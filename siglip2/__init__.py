"""siglip2-triton: a kernel-optimized SigLIP2 (NaFlex) and SigLIP (FixRes), drop-in for transformers' models.

`from siglip2.fast import Siglip2Model` runs the Triton kernels; `siglip2.reference` is the pure-PyTorch twin.
Importing this package needs neither Triton nor a GPU.
"""
from .configuration import (Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig, SiglipConfig, SiglipTextConfig,
                            SiglipVisionConfig)
from .loading import CheckpointError

__version__ = "0.1.0"

__all__ = ["Siglip2Config", "Siglip2TextConfig", "Siglip2VisionConfig", "SiglipConfig", "SiglipTextConfig",
           "SiglipVisionConfig", "CheckpointError"]
