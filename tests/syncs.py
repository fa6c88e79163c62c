"""Count host syncs: every conversion of a tensor to Python values (what stalls the GPU queue on CUDA).

Wraps `tolist`, `item`, `__bool__`, `__int__`, `__float__`, `__index__` and the size-dependent ops that sync on
CUDA (`nonzero`, boolean-mask indexing through `masked_select`), for the duration of the context.
"""

from __future__ import annotations

import collections
import contextlib

import torch

_METHODS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "masked_select")


@contextlib.contextmanager
def count_host_syncs():
    counts: collections.Counter = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in _METHODS}

    def wrap(name, original):
        def method(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return method

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
