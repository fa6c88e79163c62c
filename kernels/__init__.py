"""siglip2.kernels: the three hand-written Triton kernels of siglip2-triton, each with a PyTorch reference.

Public ops (each validates its inputs and dispatches with impl="auto"|"triton"|"reference"):
  varlen_attention / padded_attention   masked attention over packed NaFlex sequences
  naflex_patch_embed                    patch embedding + per-image antialiased position-grid resize
  sigmoid_loss / DistributedSigmoidLoss the SigLIP loss without the n x n logits
Triton is imported lazily, so this package imports on machines without it. It never imports the model code.
"""
from . import reference

__all__ = ["reference"]
