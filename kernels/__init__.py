"""siglip2.kernels: the three hand-written Triton kernels of siglip2-triton, each with a PyTorch reference.

Public ops (each validates its inputs and dispatches with impl="auto"|"triton"|"reference"):
  varlen_attention / padded_attention   masked attention over packed NaFlex sequences (and padded batches)
  naflex_patch_embed                    patch embedding + per-image antialiased position-grid resize
  sigmoid_loss / DistributedSigmoidLoss the SigLIP loss without the n x n logits, single process or a ring
Triton is imported lazily (inside the dispatch), so this package imports on machines without it.
It never imports the model code.
"""

from . import reference
from .attention import padded_attention, varlen_attention
from .loss import DistributedSigmoidLoss, sigmoid_loss
from .patch_embed import naflex_patch_embed

__all__ = [
    "DistributedSigmoidLoss",
    "naflex_patch_embed",
    "padded_attention",
    "reference",
    "sigmoid_loss",
    "varlen_attention",
]
