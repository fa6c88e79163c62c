"""The SigLIP2 / SigLIP model classes bound to the "triton" impl: packed NaFlex execution through siglip2.kernels
(varlen attention over cu_seqlens, fused patch embedding + position resize, fused sigmoid loss).

A drop-in for transformers: `from siglip2.fast import Siglip2Model`. The kernels run compiled on CUDA tensors; on
CPU the same packed path runs the kernels' PyTorch references (or the Triton interpreter with TRITON_INTERPRET=1).
`register()` / `patch_transformers(model)` bring the same kernels into a model loaded with transformers
(siglip2.integrations.transformers).
"""
from .integrations.transformers import patch_transformers, register, unpatch_transformers
from .reference import _NAMES, bind

globals().update(bind("triton", __name__))
__all__ = [*_NAMES, "register", "patch_transformers", "unpatch_transformers"]
