"""Benchmark every kernel and the whole model against the alternatives a user would pick.

    python bench/run.py                      # everything, on CUDA when available (CPU: small "quick" sizes)
    python bench/run.py --ops attention loss # a subset: attention, patch_embed, loss, preprocess, model
    python bench/run.py --quick --json out.json
    python bench/run.py --no-plots           # PNGs are written by default when matplotlib is installed

Prints a header (device, versions, date, measured copy bandwidth), one table per op, and writes
bench/results/<device>-<date>/results.json and results.md, and (with matplotlib) the PNGs of bench/plots.py next
to them. A progress bar on stderr counts the ops and, within each op, its timed measurements. Each op module
(bench/bench_<op>.py) states its FLOP or byte model in its docstring; every row gives the median time, TFLOP/s or
GB/s, % of the device peak, peak memory and the speedup over the op's baseline in the same run. The last stdout
line is one JSON document.
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
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

# Some bench modules import `bench.common`, others `common`: one module object, so one progress hook.
sys.modules.setdefault("bench.common", common)

OPS = {
    "attention": "bench_attention",
    "patch_embed": "bench_patch_embed",
    "loss": "bench_sigmoid_loss",
    "preprocess": "bench_preprocess",
    "model": "bench_model",
}
COLUMNS = [
    "case",
    "provider",
    "mode",
    "ms",
    "tflops",
    "gbps",
    "images_per_s",
    "pct_peak",
    "peak_mem_mb",
    "speedup",
    "baseline",
    "note",
]


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


def _name_transformers_baseline(rows, env) -> None:
    """The patch-embedding baseline names the transformers version it timed: transformers >= 5.2x resizes the
    position table with one vectorized matmul, earlier versions with a per-image F.interpolate loop (the
    `eager-vec` provider stays as the loop-free baseline either way)."""
    version = env.get("transformers")
    if version is None:
        return
    try:
        import inspect

        from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

        src = inspect.getsource(Siglip2VisionEmbeddings.resize_positional_embeddings)
        how = "per-image loop" if "for " in src else "vectorized"
    except Exception:
        how = "resize code not inspected"
    label = f"transformers {version} ({how} position resize)"
    for r in rows:
        if r.get("speedup") is not None or r.get("provider") == "transformers":
            r["baseline"] = label


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--quick", action="store_true", help="small sizes (default on CPU)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--out", help="results folder (default bench/results/<device>-<date>)")
    p.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write PNG plots next to results.json (default: when matplotlib is installed)",
    )
    args = p.parse_args(argv)
    if args.plots is None or args.plots:
        try:
            import matplotlib  # noqa: F401

            args.plots = True
        except ImportError:
            if args.plots:
                p.error('--plots needs matplotlib: pip install -e ".[plot]"')
            args.plots = False
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
    bar = tqdm(total=len(args.ops), desc="ops", unit="op", position=0)
    failures: list[tuple[str, str]] = []  # (op, why): any of them makes the exit status 1
    for op in args.ops:
        try:
            mod = importlib.import_module(OPS[op])
        except Exception as e:  # an op whose module does not import is a failed benchmark, never a silent skip
            traceback.print_exc()
            failures.append((op, f"import failed: {type(e).__name__}: {e}"))
            results["ops"][op] = [{"case": "-", "provider": "-", "note": f"benchmark failed: {failures[-1][1]}"}]
            bar.update()
            continue
        tqdm.write(f"\n## {op}\n{(mod.__doc__ or '').strip().splitlines()[0]}")
        cases = tqdm(desc=f"{op}: timed measurements", unit="case", position=1, leave=False)
        common.set_progress(cases.update)
        try:
            rows = mod.run(args)
        except Exception as e:
            traceback.print_exc()
            failures.append((op, f"{type(e).__name__}: {e}"))
            rows = [{"case": "-", "provider": "-", "note": "benchmark failed: " + traceback.format_exc(limit=1)[-200:]}]
        finally:
            common.set_progress(None)
            cases.close()
        if op == "patch_embed":
            _name_transformers_baseline(rows, env)
        results["ops"][op] = rows
        bar.update()
        tqdm.write(table(rows))
    bar.close()

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
    if args.plots:
        from plots import write_bench_plots

        for path in write_bench_plots(results, out):
            print(f"wrote {path}")
    skipped = [
        (op, r) for op, rows in results["ops"].items() for r in rows if str(r.get("note", "")).startswith("skip")
    ]
    if skipped:  # rows a provider could not produce here (no CUDA, an optional package): said, never dropped
        print(f"\n{len(skipped)} rows skipped:", file=sys.stderr)
        for op, r in skipped:
            print(f"  {op} / {r.get('case')} / {r.get('provider')}: {r['note']}", file=sys.stderr)
    if failures:
        print(f"\n{len(failures)} of {len(args.ops)} benchmarks FAILED (their rows say so in {out}):", file=sys.stderr)
        for op, why in failures:
            print(f"  {op}: {why}", file=sys.stderr)
    print(
        json.dumps(
            {
                "results": out,
                "ops": {k: len(v) for k, v in results["ops"].items()},
                "failed": [op for op, _ in failures],
            }
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
