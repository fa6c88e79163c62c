"""siglip2.kernels: the three hand-written Triton kernels of siglip2-triton, each with a PyTorch reference.

Public ops (each validates its inputs and dispatches with impl="auto"|"triton"|"reference"):
  varlen_attention / padded_attention   masked attention over packed NaFlex sequences (and padded batches)
  naflex_patch_embed                    patch embedding + per-image antialiased position-grid resize
  sigmoid_loss / DistributedSigmoidLoss the SigLIP loss without the n x n logits, single process or a ring
Triton is imported lazily (inside the dispatch), so this package imports on machines without it.
It never imports the model code.

Where the code lives: this file is the package's whole `__init__`; its modules are the repository's top-level
`kernels/` folder, which has no `__init__.py` on purpose. The top-level name `kernels` belongs to Hugging Face's
kernel-hub package (transformers >= 5.25 imports it), and whenever a checkout's root is on sys.path (`python -m`,
pytest, xdist workers, scripts run from the root) a folder of that name *with* an `__init__.py` would shadow it. A
folder without one is only a namespace-package candidate, which every regular package later on sys.path beats.
A wheel copies kernels/*.py next to this file (pyproject's package-dir); an editable install's finder maps
siglip2.kernels to kernels/; from a bare checkout the line below adds the folder to this package's path.
"""

import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
_checkout = _os.path.join(_os.path.dirname(_os.path.dirname(_here)), "kernels")
if not _os.path.exists(_os.path.join(_here, "attention.py")) and _os.path.isdir(_checkout):
    __path__.append(_checkout)
del _here, _checkout

# E402: the path above must be set before the first submodule import
from siglip2.kernels import reference  # noqa: E402
from siglip2.kernels.attention import padded_attention, varlen_attention  # noqa: E402
from siglip2.kernels.loss import DistributedSigmoidLoss, sigmoid_loss  # noqa: E402
from siglip2.kernels.patch_embed import naflex_patch_embed  # noqa: E402

__all__ = [
    "DistributedSigmoidLoss",
    "naflex_patch_embed",
    "padded_attention",
    "reference",
    "sigmoid_loss",
    "varlen_attention",
]
