"""Shared plumbing for the kernels, written once (the Liger-Kernel `ops/utils.py` idiom): impl resolution, the
lazy Triton import, input checks, the one output allocator with its NaN-fill test switch, the one dot-precision
rule, the one interpreter flag, and the one head-dim limit.

Nothing here imports Triton at module import time, so `import siglip2` works on machines without it.
"""

from __future__ import annotations

import os

import torch

IMPLS = ("auto", "triton", "reference")
# The attention kernels hold a head-dim row of q/k/v in registers; past 128 every config spills (docs/design.md).
MAX_HEAD_DIM = 128
# Tests set this (or monkeypatch `NAN_FILL`) so that every output buffer starts as NaN: an element that no program
# writes then fails the test instead of passing on whatever the allocator left there.
NAN_FILL = os.environ.get("SIGLIP2_KERNELS_NAN_FILL", "0") not in ("", "0")


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_fp32() -> bool:
    """The one interpreter flag, passed to every kernel as the constexpr `DOT_FP32`: upcast tl.dot operands to fp32
    when interpreting, because the triton 3.9 interpreter's bf16 tl.dot multiplies raw bit patterns (garbage)."""
    return interpreting()


def dot_precision(dtype: torch.dtype) -> str:
    """The one precision rule for tl.dot's `input_precision`: fp32 operands get IEEE dots (TF32 would make the
    fp32 path ~1e-3 accurate, worse than the eager reference); 16-bit operands run on tensor cores / MFMA, where
    the argument has no effect on the code (NVIDIA PTX is identical for "tf32" and "ieee"), but Triton's AMD
    backend accepts "tf32" on gfx942 alone: any other AMD target (gfx950, gfx90a, RDNA) rejects it with a
    CompilationError, so "ieee" it is for every dtype."""
    return "ieee"


def fp32_dot_precision(fam: str) -> str:
    """tl.dot precision for fp32 operands where TF32 accuracy is enough, on device family `fam`
    (kernels/_configs.py): "tf32" on NVIDIA; on AMD, which has no TF32 but on gfx942, exact fp32 ("ieee": fp32
    MFMA on CDNA, FMA on unknown archs), and on RDNA (no fp32 WMMA) the 3-pass bf16 split "bf16x3" (~2^-16
    relative, better than TF32's 2^-11)."""
    if fam == "rdna":
        return "bf16x3"
    return "ieee" if fam in ("gfx90a", "gfx942", "gfx950", "amd") else "tf32"


def new_empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The one output allocator of the launchers: torch.empty, or NaN-filled under the test switch `NAN_FILL`."""
    out = torch.empty(shape, dtype=dtype, device=device)
    return out.fill_(float("nan")) if NAN_FILL and out.is_floating_point() else out


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
