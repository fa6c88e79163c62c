"""`python -m siglip2.kernels.aot`: compile the launch-config tables ahead of time for GPUs this machine lacks.

    python -m siglip2.kernels.aot [--tier ci|amd|siglip2|all] [--ccs 80,90] [--op attention] [--all] [--json out.json]
    python -m siglip2.kernels.aot --ccs gfx942,gfx950 --all     # AMD targets by name (no ROCm needed)
    python -m siglip2.kernels.aot --ccs gfx942,gfx950 --tier amd   # what CI checks for AMD (SIGLIP2_AOT_AMD=full)

The cases come from aot_cases.py (every table entry of every op, per architecture), the compiles and their
resources (registers, spills, shared memory) from aot_compile.py; this prints every offender (`--all`: every
case) and a summary line. tests/test_aot.py runs the same cases as a test.
"""

from __future__ import annotations

import sys
import time

from . import aot_cases
from ._configs import AOT_CCS, is_amd
from .aot_compile import aot_run, is_offender, spill_table


def parse_archs(text: str) -> tuple:
    """The --ccs list: "80,90,gfx942" -> (80, 90, "gfx942"); CUDA compute capabilities as ints, AMD
    architectures by name."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if part.isdigit():
            out.append(int(part))
        elif is_amd(part) and part[3:].isalnum():
            out.append(part)
        else:
            raise SystemExit(
                f"--ccs: expected compute capabilities (80) or AMD archs (gfx942), comma-separated; got {part!r}"
            )
    return tuple(out)


def main(argv=None) -> int:
    """`python -m siglip2.kernels.aot [--tier ci|amd|siglip2|all] [--ccs 80,90] [--op attention] [--json out.json]`:
    compile the launch-config tables for the given architectures; print every offender (--all: every case)."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument(
        "--tier",
        choices=aot_cases.TIERS,
        default="siglip2",
        help="ci: the CI subset; amd: every SigLIP2 shape of an AMD arch's own table (CI's AMD tier); "
        "siglip2: every SigLIP2 shape (default); all: every table entry",
    )
    ap.add_argument("--ccs", default=",".join(map(str, AOT_CCS)))
    ap.add_argument("--op", choices=("attention", "patch_embed", "loss"), default=None)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--all", action="store_true", help="print every case, not only offenders")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import triton

    ccs = parse_archs(args.ccs)
    cases = [c for c in aot_cases.all_cases(ccs, args.tier) if args.op in (None, c["op"])]
    t0 = time.perf_counter()
    res = aot_run(cases, args.jobs)
    wall = time.perf_counter() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(triton=triton.__version__, wall=wall, results=res), f, indent=0)
    bad = [r for r in res if is_offender(r)]
    print(spill_table(res if args.all else bad))
    print(
        f"triton {triton.__version__}: {len(res)} cases, {len(bad)} offenders "
        f"({sum(r.get('required', False) for r in bad)} required), {wall:.0f} s wall, "
        f"{sum(r['cpu'] for r in res):.0f} CPU s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
