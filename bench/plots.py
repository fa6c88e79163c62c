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
    """{label: sorted [(x, y, y_lo, y_hi)]} from rows whose case matches x_re and that have y_key. The error bar is
    the timing's interquartile range (ms_q1..ms_q3), carried over to a rate y = k / ms as k / ms_q3 .. k / ms_q1."""
    out = defaultdict(list)
    for r in rows:
        m = re.search(x_re, str(r.get("case", "")))
        if not m or r.get(y_key) is None or (mode and r.get("mode") != mode):
            continue
        y = float(r[y_key])
        lo = hi = y
        ms, q1, q3 = r.get("ms"), r.get("ms_q1"), r.get("ms_q3")
        if ms and q1 and q3:
            if y_key == "ms":
                lo, hi = float(q1), float(q3)
            else:  # a rate: inversely proportional to the time
                lo, hi = y * float(ms) / float(q3), y * float(ms) / float(q1)
        out[group(r, m)].append((int(m.group(1)), y, lo, hi))
    return {k: sorted(v) for k, v in sorted(out.items())}


MARKERS = "osD^vP*Xh<>p"
STYLES = ["-", "--", "-.", ":"]


def _plot(plt, series, title, xlabel, ylabel, path, logx=True, logy=True):
    if not series:
        return None
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(8, 5))
    xs = sorted({pt[0] for pts in series.values() for pt in pts})
    n = len(series)
    for i, (label, pts) in enumerate(series.items()):
        x, y, lo, hi = (list(c) for c in zip(*pts))
        # a small multiplicative offset per series keeps coinciding points and bars apart; lines never fully overlap
        shift = [v * (1.0 + 0.02 * (i - (n - 1) / 2)) for v in x] if logx else x
        err = [[max(a - b, 0.0) for a, b in zip(y, lo)], [max(b - a, 0.0) for a, b in zip(y, hi)]]
        ax.errorbar(
            shift,
            y,
            yerr=err,
            label=label,
            marker=MARKERS[i % len(MARKERS)],
            linestyle=STYLES[(i // len(MARKERS)) % len(STYLES)],
            markersize=5,
            capsize=3,
            linewidth=1.2,
            markerfacecolor="none" if i % 2 else None,
        )
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        # a log axis spanning a few percent makes a 3% gap look like a factor: show at least a factor of 4
        ys = [v for pts in series.values() for pt in pts for v in pt[1:] if v > 0]
        if ys:
            lo, hi = min(ys), max(ys)
            if hi / lo < 4:
                mid = (hi * lo) ** 0.5
                ax.set_ylim(mid / 2, mid * 2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if n > 6 else 1)
    fig.text(0.99, 0.005, "error bars: interquartile range of the timings", fontsize=6, ha="right", alpha=0.7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
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
                f"patch embedding + position resize, forward\n(baseline: transformers {env.get('transformers')}) {sub}",
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
