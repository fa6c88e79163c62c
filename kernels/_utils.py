"""Shared plumbing for the kernels: impl resolution, lazy Triton import, ahead-of-time compile checks.

Nothing here imports Triton at module import time, so `import siglip2` works on machines without it.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

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


def resolve_impl(impl: str, device: torch.device, op: str) -> str:
    """Map `impl` to "triton" or "reference" for tensors on `device`.

    "auto" picks Triton on CUDA, or on CPU under `TRITON_INTERPRET=1`, else the reference.
    An explicit "triton" never falls back: it raises when it cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    runnable = device.type == "cuda" or (device.type == "cpu" and interpreting())
    if impl == "auto":
        return "triton" if runnable and triton_available() else "reference"
    if impl == "triton":
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


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compilation (no GPU needed): used by the tests to prove every launcher config
# builds for sm_80 and sm_90 without local-memory spills.
# ----------------------------------------------------------------------------------------------

def _jit_function(fn):
    """Unwrap autotuner/heuristics wrappers and the interpreter's wrapper into a plain JITFunction."""
    import triton

    while not isinstance(fn, triton.runtime.JITFunction):
        inner = getattr(fn, "fn", None)
        if inner is None:
            raise TypeError(f"cannot find a JITFunction inside {fn!r}")
        if not hasattr(inner, "fn") and callable(inner) and not isinstance(inner, triton.runtime.JITFunction):
            return triton.runtime.JITFunction(inner)  # InterpretedFunction wraps the raw Python function
        fn = inner
    return fn


def aot_compile(fn, signature: dict, constexprs: dict, cc: int, num_warps: int = 4, num_stages: int = 2) -> dict:
    """Compile a @triton.jit kernel for `sm_<cc>` and report its resource usage.

    `signature` maps every argument name to a Triton type ("*bf16", "i32", "fp32", "constexpr").
    Returns {"regs", "stack", "local", "shared"} (bytes). Register spills show up as cuobjdump's STACK (LOCAL stays
    0), so a no-spill check must require both to be 0. Kernels that call other @triton.jit helpers cannot be compiled
    while TRITON_INTERPRET=1 is set (the helpers are InterpretedFunctions): compile those in a subprocess without it.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=_jit_function(fn), signature=signature, constexprs=constexprs)
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    usage = cubin_resource_usage(k.asm["cubin"])
    usage["shared"] = max(usage.get("shared", 0), int(k.metadata.shared))
    return usage


def cuobjdump_path() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def cubin_resource_usage(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump_path(), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {"regs": int(fields["REG"]), "stack": int(fields["STACK"]), "local": int(fields["LOCAL"]),
            "shared": int(fields["SHARED"])}


# Opt-in dynamic shared memory per block (bytes).
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
