"""The SigLIP2 / SigLIP model classes bound to the "triton" impl: packed NaFlex execution through siglip2.kernels
(varlen attention over cu_seqlens, fused patch embedding + position resize, fused sigmoid loss).

A drop-in for transformers: `from siglip2.fast import Siglip2Model`. The kernels run compiled on CUDA tensors; on
CPU the same packed path runs the kernels' PyTorch references (or the Triton interpreter with TRITON_INTERPRET=1).
"""
from .reference import _NAMES, bind

globals().update(bind("triton", __name__))
__all__ = list(_NAMES)
