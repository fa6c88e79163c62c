"""Count Triton kernel launches, to prove that a test ran the Triton path and not the PyTorch reference.

Under TRITON_INTERPRET=1 every `kernel[grid](...)` goes through `InterpretedFunction.run`; compiled, through
`JITFunction.run`. Both are wrapped for the duration of the context; the counter maps kernel name -> launches.
"""

from __future__ import annotations

import collections
import contextlib


@contextlib.contextmanager
def count_triton_launches():
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    counts: collections.Counter = collections.Counter()
    originals = {cls: cls.run for cls in (InterpretedFunction, JITFunction)}

    def wrap(cls):
        original = originals[cls]

        def run(self, *args, **kwargs):
            if not kwargs.get("warmup", False):
                counts[getattr(self, "__name__", None) or self.fn.__name__] += 1
            return original(self, *args, **kwargs)

        return run

    for cls in originals:
        cls.run = wrap(cls)
    try:
        yield counts
    finally:
        for cls, original in originals.items():
            cls.run = original
