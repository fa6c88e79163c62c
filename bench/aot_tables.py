"""docs/design.md's register / spill / shared-memory tables, generated from ahead-of-time compiles (no GPU).

    python bench/aot_tables.py bench/results/aot            # compile, then write amd.md, nvidia.md and the JSON
    python bench/aot_tables.py bench/results/aot --no-compile   # re-render from the JSON already there

It runs `python -m siglip2.kernels.aot --all --json` (kernels/aot.py) twice: the "amd" tier (every SigLIP2 shape of
each AMD arch's own table, with the HIP options its launcher passes) for gfx942, gfx950, gfx90a, gfx1100 and
gfx1201, and the "siglip2" tier of the attention kernels for sm_80, 86, 89, 90, 100 and 120. From the rows:

- per arch and kernel, the maximum registers (VGPRs on AMD), the total spills and the maximum shared memory (LDS)
  over every SigLIP2 variant (bf16 and fp16; varlen, padded, padded + mask; sequence and pooling queries);
- per arch, kernel and head dim, the tile, warps, registers, spills and shared memory of the heaviest layout (bf16,
  padded + key mask, sequence queries), and on AMD the MFMA/WMMA instruction count.

docs/design.md includes amd.md and nvidia.md (`python bench/update_docs.py` refreshes them; CI checks they match).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMD_CCS = "gfx942,gfx950,gfx90a,gfx1100,gfx1201"
NVIDIA_CCS = "80,86,89,90,100,120"


def _group(r: dict) -> str:
    """The kernel a row belongs to, as the tables name it."""
    if r["op"] == "attention":
        return {"fwd": "attn fwd", "dkdv": "attn dK/dV", "dq": "attn dQ"}.get(r.get("kernel", ""), "attn delta")
    if r["op"] == "patch_embed":
        return "patch fwd" if r["name"].startswith("fwd-") else "patch adjoint"
    return "loss"


def _arch(r: dict) -> str:
    cc = r["cc"]
    return cc if isinstance(cc, str) else f"sm_{cc}"


def max_table(rows: list[dict], groups: list[str]) -> str:
    """Per arch: max registers / spills / max shared KB of each kernel group over every variant."""
    archs = list(dict.fromkeys(_arch(r) for r in rows))
    out = ["| arch | " + " | ".join(groups) + " |", "|" + "---|" * (len(groups) + 1)]
    for a in archs:
        cells = []
        for g in groups:
            sel = [r for r in rows if _arch(r) == a and _group(r) == g and "regs" in r]
            if not sel:
                cells.append("-")
                continue
            spills = sum(r["stack"] + r["local"] for r in sel)
            cells.append(f"{max(r['regs'] for r in sel)} / {spills} / {max(r['shared'] for r in sel) / 1024:.3g}")
        out.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def heavy_table(rows: list[dict], amd: bool) -> str:
    """Per arch and attention kernel: the bf16 padded + mask sequence case at each head dim."""
    sel = [
        r
        for r in rows
        if r["op"] == "attention"
        and r.get("kernel") in ("fwd", "dkdv", "dq")
        and r["dtype"] == "bf16"
        and r["layout"] == "padded+mask"
        and r["queries"] == "seq"
        and "regs" in r
    ]
    dims = sorted({r["head_dim"] for r in sel})
    head = "| arch | kernel | " + " | ".join(f"D {d}: tile (warps), regs / spills / KB" for d in dims)
    head += " | MFMA instr |" if amd else " |"
    out = [head, "|" + "---|" * (2 + len(dims) + int(amd))]
    for a in dict.fromkeys(_arch(r) for r in sel):
        for k, name in (("fwd", "fwd"), ("dkdv", "dK/dV"), ("dq", "dQ")):
            cells, mfma = [], []
            for d in dims:
                r = next((r for r in sel if _arch(r) == a and r["kernel"] == k and r["head_dim"] == d), None)
                if r is None:
                    cells.append("-")
                    mfma.append("-")
                    continue
                tile = r["tile"] + (f"+{r['block_dt']}" if r.get("block_dt") else "")
                spills = r["stack"] + r["local"]
                cells.append(f"{tile} ({r['num_warps']}), {r['regs']} / {spills} / {r['shared'] / 1024:.3g}")
                mfma.append(str(r.get("mfma", "-")))
            line = f"| {a} | {name} | " + " | ".join(cells)
            out.append(line + (f" | {' / '.join(mfma)} |" if amd else " |"))
    return "\n".join(out)


def _compile(tier: str, ccs: str, op: str | None, path: str) -> None:
    cmd = [sys.executable, "-m", "siglip2.kernels.aot", "--tier", tier, "--ccs", ccs, "--all", "--json", path]
    cmd += ["--op", op] if op else []
    print("$ " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def _doc(title: str, data: dict, command: str, body: str) -> str:
    return f"# {title}\n\n- command: `{command}`\n- triton: {data['triton']}\n\n{body}\n"


def own_rows(data: dict) -> list[dict]:
    """The rows of each arch's own table: the tiers also compile the fallback tables ("amd", "default": what an
    unknown arch gets) on every arch, and every arch listed here has a table of its own."""
    return [r for r in data["results"] if r["family"] not in ("amd", "default")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="results folder (amd.json, nvidia.json, amd.md, nvidia.md)")
    ap.add_argument("--no-compile", action="store_true", help="render the JSON files already in OUT")
    ap.add_argument("--amd-ccs", default=AMD_CCS)
    ap.add_argument("--nvidia-ccs", default=NVIDIA_CCS)
    a = ap.parse_args(argv)
    amd_json, nv_json = os.path.join(a.out, "amd.json"), os.path.join(a.out, "nvidia.json")
    if a.no_compile:
        missing = [p for p in (amd_json, nv_json) if not os.path.isfile(p)]
        if missing:
            ap.error(f"--no-compile: no {', '.join(missing)} to render; run without --no-compile first")
    else:
        os.makedirs(a.out, exist_ok=True)
        _compile("amd", a.amd_ccs, None, amd_json)
        _compile("siglip2", a.nvidia_ccs, "attention", nv_json)
    command = f"python bench/aot_tables.py {a.out}"
    with open(amd_json) as f:
        amd = json.load(f)
    groups = ["attn fwd", "attn dK/dV", "attn dQ", "patch fwd", "patch adjoint", "loss"]
    body = (
        "Max VGPRs / spills (VGPR + SGPR) / max LDS KB over every SigLIP2 variant of each arch's own table:\n\n"
        + max_table(own_rows(amd), groups)
        + "\n\nThe heaviest layout (bf16, padded + key mask), per head dim; VGPRs / spills / LDS KB:\n\n"
        + heavy_table(own_rows(amd), amd=True)
    )
    with open(os.path.join(a.out, "amd.md"), "w") as f:
        f.write(_doc("AMD: registers, spills, LDS (ahead-of-time compiles)", amd, command, body))
    with open(nv_json) as f:
        nv = json.load(f)
    body = (
        "Max registers / spill bytes (stack + local) / max shared KB over every SigLIP2 attention variant:\n\n"
        + max_table(own_rows(nv), groups[:3])
        + "\n\nThe heaviest layout (bf16, padded + key mask), per head dim; registers / spill bytes / shared KB:\n\n"
        + heavy_table(own_rows(nv), amd=False)
    )
    with open(os.path.join(a.out, "nvidia.md"), "w") as f:
        f.write(_doc("NVIDIA: registers, spills, shared memory (ahead-of-time compiles)", nv, command, body))
    print(f"wrote {a.out}/amd.md and nvidia.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
