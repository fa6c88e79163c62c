"""Ahead-of-time compilation of the Triton kernels for GPUs this machine does not have (no GPU needed).

`aot_compile` builds one kernel specialization for `sm_<cc>` with Triton's own compiler (`triton.compile` with a
`GPUTarget`, so the compute capability comes from the target, never from the machine) and reads the cubin's
resources with the `cuobjdump` Triton ships (`-res-usage`: REG, STACK, LOCAL, SHARED). Triton assembles with
its bundled ptxas (`ptxas` for sm_8x/sm_90, `ptxas-blackwell` for sm_100/sm_120: CUDA 12.8/12.9 under
triton 3.6, 12.9/13.3 under 3.8, 12.9/13.4 under 3.9). ptxas puts register spills in the stack frame, so a
spill-free kernel has STACK == LOCAL == 0. `aot_run` compiles many cases in parallel subprocesses (the tests
set TRITON_INTERPRET=1, under which helper @triton.jit functions cannot be compiled). AMD targets ("gfx942",
...) compile in-process too (`GPUTarget("hip", arch, wave size)`, no ROCm needed); their resources come from the
amdgcn text. The cases themselves, per op and per architecture, are built by kernels/aot_cases.py;
kernels/aot.py is the command line (`python -m siglip2.kernels.aot`) and tests/test_aot.py the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

from ._configs import WAVE_SIZE, family, is_amd, smem_limit


def jit_function(fn):
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


def aot_compile(
    fn,
    signature: dict,
    constexprs: dict,
    cc: int,
    num_warps: int = 4,
    num_stages: int = 2,
    aligned=False,
    maxnreg: int | None = None,
    keep_asm: bool = False,
    sass: bool = False,
    amd_options: dict | None = None,
) -> dict:
    """Compile a @triton.jit kernel for `sm_<cc>` (or the AMD architecture `cc`, e.g. "gfx942") and report its
    resource usage.

    `signature` maps argument names to Triton types ("*bf16", "i32", "fp32"); names in `constexprs` may be left
    out (they become "constexpr"). `aligned` adds the divisibility-by-16 specialization a real launch gets:
    True for every pointer argument, or an iterable of the argument names (pointers or integers) to mark.
    `maxnreg` is the launch option of that name (PTX .maxnreg), for configs that set it.
    Returns {"regs", "stack", "local", "shared"} (bytes), plus "ptx" with `keep_asm` and the disassembly
    (`cuobjdump -sass`) as "sass" with `sass` (bench/sass_report.py). ptxas puts register
    spills in the stack frame (cuobjdump STACK; LOCAL stays 0), so a no-spill check needs both to be 0.
    For an AMD `cc` (wave 64 on CDNA, 32 on RDNA; `amd_options` adds HIP options such as waves_per_eu,
    matrix_instr_nonkdim, kpack) the numbers come from the amdgcn text (`amdgcn_resource_usage`): "regs" VGPRs,
    "sgprs", "stack" VGPR spills and "local" SGPR spills (counts, not bytes: zero is the rule either way),
    "shared" LDS bytes, "mfma" the MFMA/WMMA instructions, plus "dots"/"fma_dots": the tl.dots and those of them
    not lowered to MFMA/WMMA (`ttgir_dots`); "amdgcn" with `keep_asm`.
    Kernels that call other @triton.jit helpers cannot be compiled while TRITON_INTERPRET=1 is set (the helpers
    are InterpretedFunctions): use `aot_run`, which compiles in subprocesses without it.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = jit_function(fn)
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
    if is_amd(cc):
        options.update(amd_options or {})
        k = triton.compile(src, target=GPUTarget("hip", cc, WAVE_SIZE[family(cc)]), options=options)
        usage = amdgcn_resource_usage(k.asm["amdgcn"])
        usage["shared"] = max(usage["shared"], int(k.metadata.shared))
        usage["dots"], usage["fma_dots"] = ttgir_dots(k.asm["ttgir"])
        if keep_asm:
            usage["amdgcn"] = k.asm["amdgcn"]
        return usage
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
    usage = cubin_resource_usage(k.asm["cubin"])
    usage["shared"] = max(usage.get("shared", 0), int(k.metadata.shared))
    if keep_asm:
        usage["ptx"] = k.asm["ptx"]
    if sass:
        usage["sass"] = cubin_sass(k.asm["cubin"])
    return usage


def _nvidia_tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def cuobjdump_path() -> str:
    return _nvidia_tool("cuobjdump")


def _cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([cuobjdump_path(), flag, f.name], capture_output=True, text=True, check=True).stdout


def cubin_sass(cubin: bytes) -> str:
    """The cubin's machine code as `cuobjdump -sass` prints it."""
    return _cuobjdump(cubin, "-sass")


def cubin_resource_usage(cubin: bytes) -> dict:
    out = _cuobjdump(cubin, "-res-usage")
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {
        "regs": int(fields["REG"]),
        "stack": int(fields["STACK"]),
        "local": int(fields["LOCAL"]),
        "shared": int(fields["SHARED"]),
    }


def amdgcn_resource_usage(amdgcn: str) -> dict:
    """Registers, spills, LDS and MFMA/WMMA instruction count of one kernel's amdgcn text (the AMDGPU metadata
    block: .vgpr_count, .sgpr_count, .vgpr_spill_count, .sgpr_spill_count, .group_segment_fixed_size)."""
    fields = {}
    for key in ("vgpr_count", "sgpr_count", "vgpr_spill_count", "sgpr_spill_count", "group_segment_fixed_size"):
        m = re.search(rf"^\s*(?:-\s+)?\.{key}:\s*(\d+)", amdgcn, re.M)  # a YAML list item may lead
        if m is None:
            raise ValueError(f"amdgcn: no .{key} in the kernel metadata (not amdgcn from triton.compile?)")
        fields[key] = int(m.group(1))
    return {
        "regs": fields["vgpr_count"],
        "sgprs": fields["sgpr_count"],
        "stack": fields["vgpr_spill_count"],
        "local": fields["sgpr_spill_count"],
        "shared": fields["group_segment_fixed_size"],
        "mfma": len(re.findall(r"^\s*v_(?:mfma|smfmac|wmma|swmmac)_", amdgcn, re.M)),
    }


def ttgir_dots(ttgir: str) -> tuple[int, int]:
    """(tl.dots, those not lowered to MFMA/WMMA) in AMD TTGIR: a dot on the matrix cores yields a tensor in an
    #ttg.amd_mfma / #ttg.amd_wmma layout; the FMA fallback yields a blocked one."""
    mma = set(re.findall(r"^(#\w+) = #ttg\.amd_(?:mfma|wmma)\b", ttgir, re.M))
    dots = [ln for ln in ttgir.splitlines() if re.search(r"=\s*tt\.dot(?:_scaled)?\s", ln)]
    fma = [ln for ln in dots if not any(re.search(rf"{a}\b", ln.rsplit("->", 1)[-1]) for a in mma)]
    return len(dots), len(fma)


def ptxas_report(ptx: str, cc: int) -> str:
    """ptxas -v's stack/spill lines for `ptx`: tells a register spill ("N bytes spill stores") from a call frame.

    A diagnostic re-run without Triton's exact ptxas flags, so its numbers can differ a little from the cubin's."""
    from triton.backends.nvidia.compiler import get_ptxas  # the ptxas triton itself uses for sm_<cc>

    target = re.search(r"^\.target\s+(\w+)", ptx, re.M)
    if target is None:
        raise ValueError("ptx: no .target line (not PTX from triton.compile?)")
    arch = target.group(1)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run(
            [get_ptxas(cc).path, "-v", f"--gpu-name={arch}", src, "-o", os.path.join(d, "k.cubin")],
            capture_output=True,
            text=True,
        )
    lines = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if "stack" in ln or "spill" in ln]
    return "; ".join(lines) or (r.stdout + r.stderr).strip()[-300:]


def _case_spec(case: dict) -> dict:
    """A picklable copy of an AOT case: the kernel is named by (module, function name), not passed as an object
    (the caller's kernel may be an interpreter wrapper; the subprocess imports the real @triton.jit one)."""
    py = _python_function(case["fn"])
    aligned = case.get("aligned", False)
    return dict(case, fn=(py.__module__, py.__name__), aligned=aligned if isinstance(aligned, bool) else list(aligned))


def aot_worker() -> None:
    """Subprocess side of `aot_run`: a pickled case list on stdin, a pickled result list to the file argv[1]."""
    import importlib
    import pickle
    import resource

    def cpu():  # this process and its finished children (ptxas, cuobjdump): compile cost independent of load
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + ch.ru_utime + ch.ru_stime

    out = []
    for case in pickle.load(sys.stdin.buffer):
        fn = getattr(importlib.import_module(case["fn"][0]), case["fn"][1])
        cc, t0, c0 = case["cc"], time.perf_counter(), cpu()
        try:
            u = aot_compile(
                fn,
                case["signature"],
                case["constexprs"],
                cc,
                case["num_warps"],
                case["num_stages"],
                case.get("aligned", False),
                case.get("maxnreg"),
                keep_asm=True,
                sass=case.get("sass", False),
                amd_options=case.get("amd_options"),
            )
        except Exception as e:  # report it as an offender rather than killing the whole shard
            u = {"error": f"{type(e).__name__}: {str(e)[-2000:]}"}
        u.pop("amdgcn", None)
        ptx = u.pop("ptx", None)
        if ptx is not None and (u["stack"] or u["local"]):
            u["ptxas"] = ptxas_report(ptx, cc)
        out.append(dict(u, secs=time.perf_counter() - t0, cpu=cpu() - c0))
    with open(sys.argv[1], "wb") as f:
        pickle.dump(out, f)


def aot_run(cases, jobs: int | None = None) -> list[dict]:
    """Compile every case in `jobs` subprocesses (default: one per CPU) without TRITON_INTERPRET.

    A case is a dict: name, cc (the target `sm_<cc>`), fn (the @triton.jit kernel), signature, constexprs,
    num_warps, num_stages and optionally aligned, maxnreg and sass (see `aot_compile`); any other keys (e.g.
    "required", "family", "kernel") are passed through. Returns one dict per case, in order: the case's own
    keys but fn/signature/constexprs/aligned, plus regs, stack, local, shared (or error), secs and cpu (the
    compile's wall and CPU seconds), and ptxas's spill/stack line where stack or local is nonzero.
    """
    import pickle

    work = [_case_spec(c) for c in cases]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "from siglip2.kernels.aot_compile import aot_worker; aot_worker()"
    shards = [list(range(j, len(work), jobs)) for j in range(jobs)]
    results: list = [None] * len(work)
    with tempfile.TemporaryDirectory() as d:
        procs = []
        for j, idx in enumerate(shards):
            path = os.path.join(d, f"{j}.pkl")
            # a file, not a pipe: a chatty shard cannot block; closed once its process is reaped, below
            log = open(os.path.join(d, f"{j}.log"), "w+b")  # noqa: SIM115
            p = subprocess.Popen(
                [sys.executable, "-c", code, path], env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT
            )
            assert p.stdin is not None  # stdin=PIPE
            p.stdin.write(pickle.dumps([work[i] for i in idx]))
            p.stdin.close()
            procs.append((p, path, log, idx))
        for p, path, log, idx in procs:
            rc = p.wait()
            log.seek(0)
            text = log.read().decode(errors="replace")
            log.close()
            if rc != 0:
                raise RuntimeError(f"AOT compile subprocess failed ({rc}):\n{text[-4000:]}")
            with open(path, "rb") as f:
                for i, u in zip(idx, pickle.load(f)):
                    meta = {k: v for k, v in work[i].items() if k not in ("fn", "signature", "constexprs", "aligned")}
                    results[i] = dict(meta, **u)
    return results


def is_offender(r: dict) -> bool:
    """Failed to compile, spilled (a stack frame or local memory; on AMD VGPRs or SGPRs), exceeds the arch's
    shared memory (LDS) per block, or (AMD) left a tl.dot off the matrix cores (MFMA/WMMA)."""
    if "error" in r:
        return True
    return bool(r["stack"] or r["local"] or r.get("fma_dots")) or r["shared"] > smem_limit(r["cc"])


def aot_offenders(cases, jobs: int | None = None) -> list[dict]:
    """The `aot_run` results that fail `is_offender`."""
    return [r for r in aot_run(cases, jobs) if is_offender(r)]


def spill_table(results) -> str:
    """One line per result: arch, op, case name, registers, stack/local bytes, shared KB, compile seconds.
    AMD rows (arch "gfx..."): regs are VGPRs, stack/local the VGPR/SGPR spill counts, then the MFMA/WMMA
    instruction count and the tl.dots not lowered to them ("fma")."""
    lines = [f"{'sm':>7} {'op':<12} {'case':<62} {'regs':>4} {'stack':>5} {'local':>5} {'smem KB':>7} {'s':>5}"]
    for r in sorted(results, key=lambda r: (str(r["cc"]), r.get("op", ""), r["name"])):
        if "error" in r:
            lines.append(f"{r['cc']:>7} {r.get('op', ''):<12} {r['name']:<62} ERROR {r['error'][-200:]!r}")
            continue
        amd = f" mfma {r['mfma']} fma {r['fma_dots']}" if "mfma" in r else ""
        lines.append(
            f"{r['cc']:>7} {r.get('op', ''):<12} {r['name']:<62} {r['regs']:>4} {r['stack']:>5} "
            f"{r['local']:>5} {r['shared'] / 1024:>7.1f} {r['secs']:>5.1f}{amd}"
        )
    return "\n".join(lines)
