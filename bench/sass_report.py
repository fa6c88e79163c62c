"""Main-loop instruction counts of the attention kernels in SASS, next to minimal reference kernels (issue 17).

A proxy, not a timing: it needs no GPU. For each attention kernel (forward, dK/dV, dQ), architecture and head dim,
it compiles the launch the launcher makes (bf16, varlen, the config of that architecture's table) through the
project's ahead-of-time harness (kernels/aot_compile.py, `triton.compile` for `sm_<cc>`), disassembles the cubin
with the `cuobjdump -sass` Triton ships, finds the main key (dQ, forward) or query (dK/dV) loop as the largest span
closed by a backward branch, and counts its instructions and opcodes. The same is done for the minimal kernel of
the same kind in bench/sass_reference.py, compiled with the same tile config (BLOCK_M, BLOCK_N, warps, stages,
head-dim split). At head dim 72 the reference is the unpadded 64 + 16 split (80 columns): the ratio then shows
what the kernel does beyond the tail's own dots and loads.

    python bench/sass_report.py [--ccs 80,90] [--head-dims 64,72] [--kernels fwd,dkdv,dq] [--json FILE]

`--json FILE` writes one row per (kernel, arch, head dim): {"kernel", "arch", "head_dim", "loop_instructions",
"reference_loop_instructions", "opcodes", "reference_opcodes", "tile", "triton"}.
A SASS count says nothing about latency, dual issue or memory stalls: the first GPU measurement to take is in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = ("fwd", "dkdv", "dq")

_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", re.I)
# "BRA 0x1a0", "@!P0 BRA 0x1a0" (predicate stripped before matching) or, on sm_100, "BRA.U !UP0, 0x130"
_BRANCH = re.compile(r"^BRA(?:\.\w+)*\s+(?:!?U?P\w+\s*,\s*)?`?\(?(0x[0-9a-f]+)", re.I)


def parse_sass(sass: str) -> list[tuple[int, str]]:
    """(address, instruction text without the predicate's spacing) for every instruction of the first function."""
    out = []
    for line in sass.splitlines():
        m = _INSTR.match(line)
        if m:
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def opcode(text: str) -> str:
    """The base mnemonic: '@!P0 BRA 0x2f30' -> 'BRA', 'HMMA.16816.F32.BF16 R0, ...' -> 'HMMA'."""
    parts = text.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0].split(".")[0] if parts else ""


def _branch_target(text: str):
    body = text.split(None, 1)[1] if text.startswith("@") else text
    m = _BRANCH.match(body)
    return int(m.group(1), 16) if m else None


def main_loop(instrs: list[tuple[int, str]]) -> tuple[int, int]:
    """(first, last) index of the largest span closed by a backward branch: the hot loop of a FlashAttention
    kernel (the pipelined key or query loop). A backward branch that returns from an out-of-line block (sm_100
    puts its barrier spin-waits after the kernel: `@!P BRA cold` ... `cold: spin; BRA back`, the target right
    after the forward branch that left) is not a loop. Raises if the code has no loop."""
    index = {a: i for i, (a, _) in enumerate(instrs)}
    best = None
    for i, (addr, text) in enumerate(instrs):
        target = _branch_target(text)
        if target is None or target >= addr or target not in index:
            continue
        j = index[target]
        left = _branch_target(instrs[j - 1][1]) if j > 0 else None
        if left is not None and target < left <= addr and index.get(left, 0) > i - 16:
            continue  # return from a cold block
        if best is None or i - j > best[1] - best[0]:
            best = (j, i)
    if best is None:
        raise ValueError("no backward branch in the SASS: the kernel has no loop")
    return best


def loop_stats(sass: str) -> tuple[int, collections.Counter]:
    """(instructions in the main loop, opcode counts there)."""
    instrs = parse_sass(sass)
    a, b = main_loop(instrs)
    return b - a + 1, collections.Counter(opcode(t) for _, t in instrs[a : b + 1])


def reference_case(case: dict) -> dict:
    """The minimal kernel (bench/sass_reference.py) of `case`'s kind with `case`'s tile config, its pointers and
    row stride 16-byte aligned."""
    import sass_reference

    fn = sass_reference.KERNELS[case["kernel"]]
    ptr = "*" + case["dtype"]
    floats = {"lse", "delta"}
    from siglip2.kernels.aot_compile import jit_function

    cx = dict(BLOCK_D=case["block_d"], BLOCK_DT=case["block_dt"], BLOCK_M=case["block_m"], BLOCK_N=case["block_n"])
    sig = {
        n: (
            "*fp32" if n in floats else "fp32" if n in ("qk_scale", "sm_scale") else "i32" if n in ("s_t", "T") else ptr
        )
        for n in jit_function(fn).arg_names
        if n not in cx
    }
    # pointers and the row stride 16-byte aligned, as the project's kernels know them (ALIGN, `_head_base`)
    aligned = [n for n, t in sig.items() if t.startswith("*") or t == "i32"]
    return dict(
        name="ref-" + case["name"],
        cc=case["cc"],
        kernel=case["kernel"],
        fn=fn,
        signature=sig,
        constexprs=cx,
        num_warps=case["num_warps"],
        num_stages=case["num_stages"],
        aligned=aligned,
        sass=True,
    )


def report(ccs=(80, 86, 89, 90, 100, 120), head_dims=(64, 72), kernels=KERNELS, jobs=None) -> list[dict]:
    """Compile every (kernel, cc, head dim) and its reference; return the JSON rows."""
    import triton

    from siglip2.kernels.aot_cases import attention_kernel_case
    from siglip2.kernels.aot_compile import aot_run

    # the compile subprocesses import the reference kernels by module name
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    ours = [
        dict(attention_kernel_case(k, cc, d, torch.bfloat16), sass=True)
        for cc in ccs
        for d in head_dims
        for k in kernels
    ]
    refs = [reference_case(c) for c in ours]
    res = aot_run(ours + refs, jobs)
    rows = []
    for case, r, rr in zip(ours, res[: len(ours)], res[len(ours) :]):
        for x in (r, rr):
            if "error" in x:
                raise RuntimeError(f"{x['name']} on sm_{x['cc']} failed to compile: {x['error']}")
        n, ops = loop_stats(r["sass"])
        rn, rops = loop_stats(rr["sass"])
        rows.append(
            dict(
                kernel=case["kernel"],
                arch=f"sm_{case['cc']}",
                head_dim=case["head_dim"],
                loop_instructions=n,
                reference_loop_instructions=rn,
                opcodes=dict(ops.most_common()),
                reference_opcodes=dict(rops.most_common()),
                tile=f"{case['tile']}{'+' + str(case['block_dt']) if case['block_dt'] else ''} "
                f"w{case['num_warps']}s{case['num_stages']}",
                regs=r["regs"],
                reference_regs=rr["regs"],
                spill=r["stack"] + r["local"],
                triton=triton.__version__,
            )
        )
    return rows


def diff(row: dict, top: int = 6) -> str:
    """The opcodes whose counts differ most from the reference's: 'FSEL +32, ISETP +18'."""
    ops, ref = row["opcodes"], row["reference_opcodes"]
    d = {k: ops.get(k, 0) - ref.get(k, 0) for k in set(ops) | set(ref)}
    items = sorted((kv for kv in d.items() if kv[1]), key=lambda kv: (-abs(kv[1]), kv[0]))[:top]
    return ", ".join(f"{k} {v:+d}" for k, v in items) or "same mix"


def table(rows) -> str:
    lines = [f"{'kernel':<6} {'arch':<7} {'D':>3} {'tile':<16} {'loop':>5} {'ref':>5} {'ratio':>6}  opcodes vs ref"]
    for r in rows:
        n, ref = r["loop_instructions"], r["reference_loop_instructions"]
        lines.append(
            f"{r['kernel']:<6} {r['arch']:<7} {r['head_dim']:>3} {r['tile']:<16} {n:>5} {ref:>5} "
            f"{n / ref:>6.2f}  {diff(r)}"
        )
    return "\n".join(lines)


def markdown(rows, before=None) -> str:
    """The docs/benchmarks.md table of `rows` (a --json file's), with a "before" file's loop counts beside them."""
    old = {(r["kernel"], r["arch"], r["head_dim"]): r for r in before or []}
    head = "| kernel | arch | D | tile | minimal | ours | ratio |"
    head += " before: loop / its minimal |" if before else ""
    out = [head + " what is left (ours vs minimal) |", "|" + "---|" * (head.count("|"))]
    for r in rows:
        n, ref = r["loop_instructions"], r["reference_loop_instructions"]
        cells = [r["kernel"], r["arch"], str(r["head_dim"]), r["tile"], str(ref), f"**{n}**", f"**{n / ref:.2f}x**"]
        if before:
            b = old.get((r["kernel"], r["arch"], r["head_dim"]))
            cells.append(
                f"{b['loop_instructions']} / {b['reference_loop_instructions']} "
                f"({b['loop_instructions'] / b['reference_loop_instructions']:.2f}x)"
                if b
                else "-"
            )
        out.append("| " + " | ".join([*cells, diff(r, top=4)]) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ccs", default="80,86,89,90,100,120")
    ap.add_argument("--head-dims", default="64,72")
    ap.add_argument("--kernels", default=",".join(KERNELS))
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the rows to this file")
    ap.add_argument("--from-json", default=None, help="compile nothing: render the rows of this --json file")
    ap.add_argument("--before", default=None, help="with --md: an earlier --json file, its loop counts beside")
    ap.add_argument("--md", default=None, help="write the Markdown table of docs/benchmarks.md to this file")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            rows = json.load(f)
        before = None
        if args.before:
            with open(args.before) as f:
                before = json.load(f)
        text = f"# {args.from_json}\n\n- command: `python bench/sass_report.py {' '.join(argv or sys.argv[1:])}`\n\n"
        text += markdown(rows, before) + "\n"
        if args.md:
            with open(args.md, "w") as f:
                f.write(text)
        print(text, end="")
        return 0
    kernels = tuple(args.kernels.split(","))
    if set(kernels) - set(KERNELS):
        ap.error(f"--kernels must be among {KERNELS}, got {args.kernels!r}")
    rows = report(
        tuple(int(c) for c in args.ccs.split(",")), tuple(int(d) for d in args.head_dims.split(",")), kernels, args.jobs
    )
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
