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


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compilation (no GPU needed): the tests prove that every launcher config builds for sm_80 and
# sm_90 with no spills (ptxas STACK == 0 and LOCAL == 0) and fits shared memory, under triton 3.6 and 3.9.
# ----------------------------------------------------------------------------------------------

# Opt-in dynamic shared memory per block (bytes).
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


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


def _python_function(fn):
    """The undecorated Python function under @triton.jit / autotune / the interpreter's wrapper."""
    while hasattr(fn, "fn"):
        fn = fn.fn
    return fn


def aot_compile(fn, signature: dict, constexprs: dict, cc: int, num_warps: int = 4, num_stages: int = 2,
                aligned=False, maxnreg: int | None = None, keep_asm: bool = False) -> dict:
    """Compile a @triton.jit kernel for `sm_<cc>` and report its resource usage.

    `signature` maps argument names to Triton types ("*bf16", "i32", "fp32"); names in `constexprs` may be left
    out (they become "constexpr"). `aligned` adds the divisibility-by-16 specialization a real launch gets:
    True for every pointer argument, or an iterable of the argument names (pointers or integers) to mark.
    `maxnreg` is the launch option of that name (PTX .maxnreg), for configs that set it.
    Returns {"regs", "stack", "local", "shared"} (bytes), plus "ptx" with `keep_asm`. ptxas puts register
    spills in the stack frame (cuobjdump STACK; LOCAL stays 0), so a no-spill check needs both to be 0.
    Kernels that call other @triton.jit helpers cannot be compiled while TRITON_INTERPRET=1 is set (the helpers
    are InterpretedFunctions): use `aot_run`, which compiles in subprocesses without it.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _jit_function(fn)
    sig = {n: ("constexpr" if n in constexprs else signature[n]) for n in fn.arg_names}
    if aligned is True:
        aligned = [n for n, t in sig.items() if t.startswith("*")]
    # ASTSource attrs: {(arg index,): [[attr, value]]}, the form both triton 3.6 and 3.9 build from a launch's
    # specialization string ("D" -> [["tt.divisibility", 16]], backends/compiler.py BaseBackend.parse_attr)
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in (aligned or ())}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    # enable_fp_fusion spelled out: the default of a real launch, and 3.9 warns when it is left unset
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
    usage = cubin_resource_usage(k.asm["cubin"])
    usage["shared"] = max(usage.get("shared", 0), int(k.metadata.shared))
    if keep_asm:
        usage["ptx"] = k.asm["ptx"]
    return usage


def _nvidia_tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def cuobjdump_path() -> str:
    return _nvidia_tool("cuobjdump")


def cubin_resource_usage(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump_path(), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {"regs": int(fields["REG"]), "stack": int(fields["STACK"]), "local": int(fields["LOCAL"]),
            "shared": int(fields["SHARED"])}


def ptxas_report(ptx: str, cc: int) -> str:
    """ptxas -v's stack/spill lines for `ptx`: tells a register spill ("N bytes spill stores") from a call frame.

    A diagnostic re-run without Triton's exact ptxas flags, so its numbers can differ a little from the cubin's."""
    from triton.backends.nvidia.compiler import get_ptxas  # the ptxas triton itself uses for sm_<cc>

    arch = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([get_ptxas(cc).path, "-v", f"--gpu-name={arch}", src, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True)
    lines = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if "stack" in ln or "spill" in ln]
    return "; ".join(lines) or (r.stdout + r.stderr).strip()[-300:]


def _case_spec(case: dict) -> dict:
    """A picklable copy of an AOT case: the kernel is named by (module, function name), not passed as an object
    (the caller's kernel may be an interpreter wrapper; the subprocess imports the real @triton.jit one)."""
    py = _python_function(case["fn"])
    aligned = case.get("aligned", False)
    return dict(case, fn=(py.__module__, py.__name__),
                aligned=aligned if isinstance(aligned, bool) else list(aligned))


def _aot_worker() -> None:
    """Subprocess side of `aot_run`: pickled [(case, cc)] on stdin, a pickled result list to the file argv[1]."""
    import importlib
    import pickle
    import sys

    jobs = pickle.load(sys.stdin.buffer)
    out = []
    for case, cc in jobs:
        fn = getattr(importlib.import_module(case["fn"][0]), case["fn"][1])
        try:
            u = aot_compile(fn, case["signature"], case["constexprs"], cc, case["num_warps"], case["num_stages"],
                            case.get("aligned", False), case.get("maxnreg"), keep_asm=True)
        except Exception as e:  # report it as an offender rather than killing the whole shard
            u = {"error": f"{type(e).__name__}: {str(e)[-2000:]}"}
        ptx = u.pop("ptx", None)
        if ptx is not None and (u["stack"] or u["local"]):
            u["ptxas"] = ptxas_report(ptx, cc)
        out.append(dict(name=case["name"], cc=cc, **u))
    with open(sys.argv[1], "wb") as f:
        pickle.dump(out, f)


def aot_run(cases, ccs=(80, 90), jobs: int | None = None) -> list[dict]:
    """Compile every case for every `sm_<cc>` in `jobs` subprocesses without TRITON_INTERPRET.

    A case is a dict: name, fn (the @triton.jit kernel), signature, constexprs, num_warps, num_stages and
    optionally aligned and maxnreg (see `aot_compile`). Returns one dict per (case, cc): name, cc, regs, stack, local,
    shared (or error), plus ptxas's spill/stack line where stack or local is nonzero.
    """
    import pickle
    import sys

    work = [(_case_spec(c), cc) for c in cases for cc in ccs]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "from siglip2.kernels._utils import _aot_worker; _aot_worker()"
    results = []
    with tempfile.TemporaryDirectory() as d:
        procs = []
        for j in range(jobs):
            path = os.path.join(d, f"{j}.pkl")
            log = open(os.path.join(d, f"{j}.log"), "w+b")  # a file, not a pipe: a chatty shard cannot block
            p = subprocess.Popen([sys.executable, "-c", code, path], env=env, stdin=subprocess.PIPE,
                                 stdout=log, stderr=subprocess.STDOUT)
            p.stdin.write(pickle.dumps(work[j::jobs]))
            p.stdin.close()
            procs.append((p, path, log))
        for p, path, log in procs:
            rc = p.wait()
            log.seek(0)
            text = log.read().decode(errors="replace")
            log.close()
            if rc != 0:
                raise RuntimeError(f"AOT compile subprocess failed ({rc}):\n{text[-4000:]}")
            with open(path, "rb") as f:
                results += pickle.load(f)
    return results


def aot_offenders(cases, ccs=(80, 90), jobs: int | None = None) -> list[dict]:
    """The `aot_run` results that failed to compile, use a stack frame or local memory, or exceed SMEM_LIMIT."""
    return [r for r in aot_run(cases, ccs, jobs)
            if "error" in r or r["stack"] or r["local"] or r["shared"] > SMEM_LIMIT[r["cc"]]]
