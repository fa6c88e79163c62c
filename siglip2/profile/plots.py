"""PNG plots of a `siglip2 profile` run (matplotlib, the optional `[plot]` extra; the Agg backend, no display).

decision.png                 quality against cost per budget, the recommended budget marked: drift against
                             the largest budget (with --model; the --max-drift line drawn) or resolution lost
                             (upsampled fraction, aspect error) without it; cost as packed images/s when the
                             timings are usable, else FLOPs per image
images_per_s_vs_budget.png   images/s of each execution mode against max_num_patches (with timing; bars: IQR)
padding_vs_budget.png        padding of the computed tokens (padded vs packed layout) and images upsampled
tokens_per_image_hist.png    tokens per image, one histogram per budget
drift_vs_budget.png          mean (and 5th percentile) cosine against the largest budget (with --model)
"""

from __future__ import annotations

import os
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _budget_axis(ax: Any, budgets: list[int], log_y: bool = False) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.xaxis.set_minor_formatter(NullFormatter())
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("max_num_patches")
    ax.grid(alpha=0.3)


def _title(result: dict, what: str) -> str:
    env, inp = result["environment"], result["inputs"]
    return f"{what}\n{result['model']['source']}, {inp['images']} images, {env['torch_device']} {env['dtype']}"


STYLES = ["-", "--", "-."]


def _decision(plt: Any, result: dict, out_dir: str) -> str:
    fig = decision_figure(result)
    p = os.path.join(out_dir, "decision.png")
    fig.tight_layout()
    fig.savefig(p, dpi=80)
    plt.close(fig)
    return p


def decision_figure(result: dict) -> Any:
    """decision.png's figure: one point per budget, quality (y) against cost (x), the recommended budget starred."""
    plt = _pyplot()
    entries, rec, s = result["budgets"], result["recommendation"], result["settings"]
    budgets = [e["max_num_patches"] for e in entries]
    timed = all(e.get("timing") and "packed" in e["timing"] for e in entries)
    fig, ax = plt.subplots(figsize=(7, 4.6))
    if timed and s.get("timing_usable"):
        t = [e["timing"]["packed"] for e in entries]
        x = [v["images_per_s"] for v in t]
        xerr = [
            [v["images_per_s"] - v.get("images_per_s_lo", v["images_per_s"]) for v in t],
            [v.get("images_per_s_hi", v["images_per_s"]) - v["images_per_s"] for v in t],
        ]
        xlabel = "cost: packed images/s (median; bars: interquartile range; inverted: more expensive ->)"
        ax.invert_xaxis()  # cost grows to the right, as with FLOPs
    else:
        x = [e["flops_per_image_packed"]["total"] / 1e9 for e in entries]
        xerr = None
        why = "no timing" if not timed else "timings unusable (see the report)"
        xlabel = f"cost: GFLOP per image, packed ({why}; FLOPs are exact, no error bar)"
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if "drift_cosine_mean" in entries[0]:
        y = [1 - e["drift_cosine_mean"] for e in entries]
        yerr = [e.get("drift_cosine_ci95") or 0.0 for e in entries]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", capsize=3, label="drift: 1 - mean cosine (95% CI)")
        ax.axhline(s["max_drift"], color="C3", linestyle="--", linewidth=1, label=f"--max-drift {s['max_drift']:g}")
        ax.set_ylabel(f"quality lost: drift against max_num_patches {max(budgets)}")
        marks = y
    else:
        up = [100 * e["upsampled_fraction"] for e in entries]
        asp = [100 * e["aspect_error_mean"] for e in entries]
        asp_hi = [100 * (e["aspect_error_p95"] - e["aspect_error_mean"]) for e in entries]
        ax.errorbar(
            x,
            asp,
            xerr=xerr,
            yerr=[[0.0] * len(asp), asp_hi],
            marker="o",
            capsize=3,
            label="aspect-ratio error, mean (bar to the 95th percentile)",
        )
        ax.errorbar(
            x,
            up,
            xerr=xerr,
            marker="s",
            linestyle="--",
            capsize=3,
            markerfacecolor="none",
            label="images upsampled (no new detail)",
        )
        ax.set_ylabel("% (aspect error: shape lost; upsampled: tokens\nspent on no new detail)", fontsize=8)
        marks = asp
    for xi, yi, m in zip(x, marks, budgets):
        ax.annotate(str(m), (xi, yi), textcoords="offset points", xytext=(4, 6), fontsize=7)
    m = rec.get("max_num_patches")
    if m is not None:
        i = budgets.index(m)
        ax.plot(
            [x[i]],
            [marks[i]],
            marker="*",
            markersize=18,
            color="C3",
            linestyle="none",
            zorder=4,
            label=f"recommended: max_num_patches {m}",
        )
    title = f"recommendation: {m if m is not None else 'none'} (basis: {', '.join(rec.get('basis') or ['-'])})"
    ax.set_title(_title(result, title), fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def write_plots(result: dict, tokens_per_budget: dict, drift: dict | None, out_dir: str) -> list[str]:
    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    entries = result["budgets"]
    budgets = [e["max_num_patches"] for e in entries]
    paths = []

    def save(fig: Any, name: str) -> None:
        p = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)

    paths.append(_decision(plt, result, out_dir))

    if any(e.get("timing") for e in entries):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for i, (mode, marker) in enumerate((("padded", "o"), ("padded-sdpa", "s"), ("packed", "^"))):
            pts = [
                (e["max_num_patches"], e["timing"][mode]) for e in entries if e.get("timing") and mode in e["timing"]
            ]
            if not pts:
                continue
            x = [m * (1 + 0.02 * (i - 1)) for m, _ in pts]  # a small offset: coinciding points stay visible
            y = [t["images_per_s"] for _, t in pts]
            lo = [t["images_per_s"] - t.get("images_per_s_lo", t["images_per_s"]) for _, t in pts]
            hi = [t.get("images_per_s_hi", t["images_per_s"]) - t["images_per_s"] for _, t in pts]
            label = f"{mode}: {pts[0][1]['impl']}"
            ax.errorbar(x, y, yerr=[lo, hi], marker=marker, linestyle=STYLES[i], capsize=3, label=label)
        _budget_axis(ax, budgets, log_y=True)
        ax.set(ylabel="images/s", title=_title(result, "throughput (one batch; median, bars: interquartile range)"))
        ax.legend(fontsize=7)
        save(fig, "images_per_s_vs_budget.png")

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6.5, 5), sharex=True)
    ax.plot(budgets, [100 * e["padding_fraction_padded"] for e in entries], "o-", label="padded (transformers)")
    # drawn last and above: the packed layout computes no padding rows, a line at 0 that nothing may hide
    ax.plot(
        budgets,
        [100 * e["padding_fraction_packed"] for e in entries],
        "^--",
        label="packed (siglip2.fast)",
        zorder=3,
        markerfacecolor="none",
    )
    top = max([100 * e["padding_fraction_padded"] for e in entries] + [1.0])
    ax.set(ylabel="% of computed tokens\nthat are padding", ylim=(-0.08 * top, 1.15 * top))
    ax.set_title(_title(result, "padding and upsampling"), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax2.plot(budgets, [100 * e["upsampled_fraction"] for e in entries], "x-", color="C2", label="images upsampled")
    _budget_axis(ax2, budgets)
    ax2.set(ylabel="% of images upsampled", ylim=(-4, 104))
    ax2.legend(fontsize=8)
    save(fig, "padding_vs_budget.png")

    cols = min(3, len(budgets))
    rows = -(-len(budgets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, m in zip(axes.flat, budgets):
        t = tokens_per_budget[m]
        lo = int(t.min())
        step = max(1, (m + 1 - lo) // 30)
        ax.hist(t, bins=[b - 0.5 for b in range(lo, m + 2, step)], color="C0")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.axvline(m, color="C3", linewidth=1, linestyle=":")
        ax.set_title(f"max_num_patches {m}: mean {t.mean():.0f}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(budgets) :]:
        ax.axis("off")
    fig.supxlabel("tokens per image (h x w patches; dotted: the budget)", fontsize=8)
    fig.supylabel("images", fontsize=8)
    fig.suptitle(_title(result, "tokens per image"), fontsize=9)
    save(fig, "tokens_per_image_hist.png")

    if drift is not None:
        import numpy as np

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(budgets, [float(np.mean(drift[m])) for m in budgets], "o-", label="mean cosine")
        ax.plot(budgets, [float(np.percentile(drift[m], 5)) for m in budgets], "v:", label="5th percentile")
        _budget_axis(ax, budgets)
        ax.set(ylabel=f"cosine vs max_num_patches {max(budgets)}", title=_title(result, "embedding drift"))
        ax.legend(fontsize=8)
        save(fig, "drift_vs_budget.png")
    return paths
