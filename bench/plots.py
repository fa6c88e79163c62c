"""PNG plots of a bench/run.py results document (matplotlib, the optional `[plot]` extra), next to results.json.

  attention_tflops_vs_seqlen.png   TFLOP/s against max_num_patches (the sequence length), per provider and head dim
  patch_embed_gbps_vs_batch.png    GB/s against batch size, per provider, max_num_patches and width (forward)
  loss_ms_vs_n.png                 ms (forward + backward) against n, per provider and embedding width
  model_images_per_s_vs_patches.png  images/s against max_num_patches, per provider and model size

Sizes are read back from the case names each bench module writes (N<len>-B..-D<d>, B<b>-L<l>-D<d>, n<n>-d<d>,
"<model> B=<b> L=<l>"). Rows without a time (skipped providers) are left out.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

D_RE, L_RE, SMALL_D_RE = r"-D(\d+)", r"-L(\d+)", r"-d(\d+)"


def _series(rows, x_re, group, y_key, mode=None):
    """{label: sorted [(x, y)]} from rows whose case matches x_re and that have y_key."""
    out = defaultdict(list)
    for r in rows:
        m = re.search(x_re, str(r.get("case", "")))
        if not m or r.get(y_key) is None or (mode and r.get("mode") != mode):
            continue
        out[group(r, m)].append((int(m.group(1)), float(r[y_key])))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _plot(plt, series, title, xlabel, ylabel, path, logx=True, logy=True):
    if not series:
        return None
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = sorted({x for pts in series.values() for x, _ in pts})
    for label, pts in series.items():
        ax.plot(*zip(*pts), "o-", label=label, markersize=4)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(series) > 6 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_bench_plots(results: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    env, ops = results["env"], results["ops"]
    sub = f"{env.get('device')}, {env.get('dtype', '')}, {env.get('date')}"
    paths = []
    if "attention" in ops:
        s = _series(
            ops["attention"], r"^N(\d+)-", lambda r, m: f"{r['provider']} D={_get(r, D_RE)}", "tflops", mode="fwd"
        )
        paths.append(
            _plot(
                plt,
                s,
                f"varlen attention forward (useful FLOPs)\n{sub}",
                "max_num_patches (sequence length)",
                "TFLOP/s",
                os.path.join(out_dir, "attention_tflops_vs_seqlen.png"),
            )
        )
    if "patch_embed" in ops:
        s = _series(
            ops["patch_embed"],
            r"^B(\d+)-",
            lambda r, m: f"{r['provider']} L={_get(r, L_RE)} D={_get(r, D_RE)}",
            "gbps",
            mode="fwd",
        )
        paths.append(
            _plot(
                plt,
                s,
                f"patch embedding + position resize, forward (baseline: transformers {env.get('transformers')})\n{sub}",
                "batch size",
                "GB/s",
                os.path.join(out_dir, "patch_embed_gbps_vs_batch.png"),
            )
        )
    if "loss" in ops:
        s = _series(ops["loss"], r"^n(\d+)-", lambda r, m: f"{r['provider']} d={_get(r, SMALL_D_RE)}", "ms")
        paths.append(
            _plot(
                plt,
                s,
                f"sigmoid loss, forward + backward\n{sub}",
                "n (batch of pairs)",
                "ms",
                os.path.join(out_dir, "loss_ms_vs_n.png"),
            )
        )
    if "model" in ops:
        s = _series(
            ops["model"], r"L=(\d+)", lambda r, m: f"{r['provider']} {str(r['case']).split(' B=')[0]}", "images_per_s"
        )
        paths.append(
            _plot(
                plt,
                s,
                f"vision tower forward\n{sub}",
                "max_num_patches",
                "images/s",
                os.path.join(out_dir, "model_images_per_s_vs_patches.png"),
            )
        )
    return [p for p in paths if p]


def _get(row, pattern):
    m = re.search(pattern, str(row.get("case", "")))
    return m.group(1) if m else "?"
