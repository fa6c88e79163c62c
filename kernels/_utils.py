"""Shared plumbing for the kernels: impl resolution, lazy Triton import, input checks.

Nothing here imports Triton at module import time, so `import siglip2` works on machines without it.
"""
from __future__ import annotations

import os

import torch

IMPLS = ("auto", "triton", "reference")


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_TRITON_OK = None


def triton_available() -> bool:
    # a plain module global, not lru_cache: dynamo warns when tracing through lru_cache-wrapped functions
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            import triton  # noqa: F401

            _TRITON_OK = True
        except Exception:
            _TRITON_OK = False
    return _TRITON_OK


def resolve_impl(impl: str, device: torch.device, op: str, unsupported: str | None = None) -> str:
    """Map `impl` to "triton" or "reference" for tensors on `device`.

    "auto" picks Triton on CUDA, or on CPU under `TRITON_INTERPRET=1`, else the reference; it also picks the
    reference when `unsupported` names something the kernel cannot do (e.g. "float64 inputs").
    An explicit "triton" never falls back: it raises when it cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    runnable = device.type == "cuda" or (device.type == "cpu" and interpreting())
    if impl == "auto":
        return "triton" if runnable and triton_available() and unsupported is None else "reference"
    if impl == "triton":
        if unsupported is not None:
            raise ValueError(f"{op}: impl='triton' does not support {unsupported}; use impl='reference' or 'auto'")
        if not triton_available():
            raise RuntimeError(f"{op}: impl='triton' needs the `triton` package, which is not importable")
        if not runnable:
            raise RuntimeError(
                f"{op}: impl='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1); "
                f"got tensors on {device}"
            )
    return impl


def check_tensor(name: str, t, *, ndim: int | None = None, dtypes=None, device=None, op: str) -> None:
    """Raise a ValueError/TypeError that names the argument, what was expected and what came."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} must be on {device} like the other inputs, got {t.device}")
