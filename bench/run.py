"""Benchmark every kernel and the whole model against the alternatives a user would pick.

    python bench/run.py                      # everything, on CUDA when available (CPU: small "quick" sizes)
    python bench/run.py --ops attention loss # a subset: attention, patch_embed, loss, preprocess, model
    python bench/run.py --quick --json out.json
    python bench/run.py --no-plots           # PNGs are written by default when matplotlib is installed

Prints a header (device, versions, date, measured copy bandwidth), one table per op, and writes
bench/results/<device>-<date>-<time>-<commit>/results.json and results.md (a new folder per run, listed in
bench/results/index.md), and (with matplotlib) the PNGs of bench/plots.py next
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

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")  # where runs go, one folder each
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
    "ms_q1",
    "ms_q3",
    "n",
    "noisy",
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


def flatten_timings(rows: list[dict]) -> list[dict]:
    """Rows as plain data: a Timing under "ms" becomes ms (median), ms_q1, ms_q3, ms_min, ms_max, n, noisy and the
    timing method; a noisy row says so in its note."""
    out = []
    for r in rows:
        r = dict(r)
        ms = r.get("ms")
        if isinstance(ms, common.Timing):
            r.update(ms.fields())
            if ms.noisy:
                r["note"] = "; ".join(x for x in (r.get("note"), "noisy: IQR > 10% of the median") if x)
        out.append(r)
    return out


def provenance(argv) -> dict:
    """Who ran what, where and when: appended to the environment header of every results file."""
    import datetime
    import platform
    import shlex
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            # results folders and their index are what runs write: a run does not make the next one "dirty"
            [
                "git",
                "-C",
                here,
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top)",
                ":(top,exclude)bench/results",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "time": datetime.datetime.now().strftime("%H:%M:%S"),
        "commit": (commit or "unknown") + ("+dirty" if dirty else ""),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "command": "python bench/run.py " + " ".join(shlex.quote(a) for a in argv),
    }


def run_folder(env, kind: str | None = None) -> str:
    """bench/results/[<kind>-]<device>-<date>-<time>-<commit>: one folder per run, never reused."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"].split("(")[0]).strip("-").lower()
    base = RESULTS
    when = f"{env['date']}-{env['time'].replace(':', '')}"
    name = f"{kind + '-' if kind else ''}{slug}-{when}-{env['commit'].replace('+dirty', '-dirty')}"
    out, k = os.path.join(base, name), 1
    while os.path.exists(out):
        k += 1
        out = os.path.join(base, f"{name}-{k}")
    return out


def _index(out: str, env: dict, results: dict, failed: list[str]) -> None:
    """One line per run in bench/results/index.md (created with its header on first use)."""
    path = os.path.join(os.path.dirname(out), "index.md")
    new = not os.path.exists(path)
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write("# Benchmark runs (bench/run.py appends one line per run)\n\n")
            f.write("| folder | date | device | commit | load at start | ops | failed | command |\n")
            f.write("|---|---|---|---|---|---|---|---|\n")
        f.write(
            f"| {os.path.basename(out)} | {env['date']} {env['time']} | {env['device']} | {env['commit']} | "
            f"{env['loadavg_at_start']} | {', '.join(results['ops'])} | {', '.join(failed) or '-'} | "
            f"`{env['command']}` |\n"
        )


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
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="quick sizes and one timed call per measurement on CPU: checks that every benchmark runs end to end "
        "(the Triton providers through the interpreter when TRITON_INTERPRET=1), not how fast",
    )
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--out", help="results folder (default: a new bench/results/<device>-<date>-<time>-<commit>)")
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
    args.quick = args.quick or args.device == "cpu" or args.dry_run
    common.set_dry_run(args.dry_run)
    args.dtype = getattr(torch, args.dtype)
    if args.device == "cpu" and args.dtype != torch.float32:
        args.dtype = torch.float32  # CPU timings are for correctness of the harness only; bf16 matmul on CPU is slow

    common.quiet_cuda_probe()
    env = common.environment()
    env.update(provenance(sys.argv[1:] if argv is None else argv))
    env["copy_gbps"] = common.measured_copy_gbps(args.device)
    env["dtype"], env["quick"] = str(args.dtype), args.quick
    print("# " + " | ".join(f"{k}: {v}" for k, v in env.items()))
    results = {"env": env, "ops": {}}
    # On a terminal: an ops bar and, below it, the op's measurements. Into a log file: the ops bar alone, with no
    # cursor-movement codes (a second bar positioned below the first writes "\x1b[A" sequences).
    tty = sys.stderr.isatty()
    bar = tqdm(total=len(args.ops), desc="ops", unit="op", position=0 if tty else None)
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
        cases = tqdm(desc=f"{op}: timed measurements", unit="case", position=1, leave=False, disable=not tty)
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
        rows = flatten_timings(rows)
        if op == "patch_embed":
            _name_transformers_baseline(rows, env)
        results["ops"][op] = rows
        bar.update()
        tqdm.write(table(rows))
    bar.close()

    out = os.path.normpath(os.path.abspath(args.out or run_folder(env)))
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
    if args.out is None:
        _index(out, env, results, [op for op, _ in failures])
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
