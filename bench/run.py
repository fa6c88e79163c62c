"""Benchmark every kernel and the whole model against the alternatives a user would pick.

    python bench/run.py                      # everything, on CUDA when available (CPU: small "quick" sizes)
    python bench/run.py --ops attention loss # a subset: attention, patch_embed, loss, preprocess, model
    python bench/run.py --quick --json out.json

Prints a header (device, versions, date, measured copy bandwidth), one table per op, and writes
bench/results/<device>-<date>/results.json and results.md. Each op module (bench/bench_<op>.py) states its FLOP or
byte model in its docstring; every row gives the median time, TFLOP/s or GB/s, % of the device peak, peak memory and
the speedup over the op's baseline in the same run. The last stdout line is one JSON document.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

OPS = {"attention": "bench_attention", "patch_embed": "bench_patch_embed", "loss": "bench_sigmoid_loss",
       "preprocess": "bench_preprocess", "model": "bench_model"}
COLUMNS = ["case", "provider", "mode", "ms", "tflops", "gbps", "images_per_s", "pct_peak", "peak_mem_mb", "speedup",
           "baseline", "note"]


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def table(rows) -> str:
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--quick", action="store_true", help="small sizes (default on CPU)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--out", help="results folder (default bench/results/<device>-<date>)")
    args = p.parse_args(argv)
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.quick = args.quick or args.device == "cpu"
    args.dtype = getattr(torch, args.dtype)
    if args.device == "cpu" and args.dtype != torch.float32:
        args.dtype = torch.float32  # CPU timings are for correctness of the harness only; bf16 matmul on CPU is slow

    env = common.environment()
    env["copy_gbps"] = common.measured_copy_gbps(args.device)
    env["dtype"], env["quick"] = str(args.dtype), args.quick
    print("# " + " | ".join(f"{k}: {v}" for k, v in env.items()))
    results = {"env": env, "ops": {}}
    for op in args.ops:
        try:
            mod = importlib.import_module(OPS[op])
        except ModuleNotFoundError as e:
            print(f"\n## {op}: skipped ({e})")
            continue
        print(f"\n## {op}\n{(mod.__doc__ or '').strip().splitlines()[0]}")
        try:
            rows = mod.run(args)
        except Exception:
            traceback.print_exc()
            rows = [{"case": "-", "provider": "-", "note": "benchmark failed: " + traceback.format_exc(limit=1)[-200:]}]
        results["ops"][op] = rows
        print(table(rows), flush=True)

    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"].split("(")[0]).strip("-").lower()
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"{slug}-{env['date']}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("# Benchmark results\n\n" + "\n".join(f"- {k}: {v}" for k, v in env.items()) + "\n")
        for op, rows in results["ops"].items():
            f.write(f"\n## {op}\n\n{table(rows)}\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    print(json.dumps({"results": out, "ops": {k: len(v) for k, v in results["ops"].items()}}))


if __name__ == "__main__":
    main()
