"""PNG plots of a `siglip2 profile` run (matplotlib, the optional `[plot]` extra; the Agg backend, no display).

images_per_s_vs_budget.png   images/s of each execution mode against max_num_patches (with timing)
padding_vs_budget.png        fraction of computed tokens that are padding, padded vs packed layout
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

    if any(e.get("timing") for e in entries):
        fig, ax = plt.subplots(figsize=(6, 4))
        for mode, style in (("padded", "o-"), ("padded-sdpa", "s--"), ("packed", "^-")):
            pts = [
                (e["max_num_patches"], e["timing"][mode]["images_per_s"])
                for e in entries
                if e.get("timing") and mode in e["timing"]
            ]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{mode}: {entries[0]['timing'][mode]['impl']}")
        _budget_axis(ax, budgets, log_y=True)
        ax.set(ylabel="images/s", title=_title(result, "throughput (one batch, median)"))
        ax.legend(fontsize=7)
        save(fig, "images_per_s_vs_budget.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(budgets, [100 * e["padding_fraction_padded"] for e in entries], "o-", label="padded (transformers)")
    ax.plot(budgets, [100 * e["padding_fraction_packed"] for e in entries], "^-", label="packed (siglip2.fast)")
    ax.plot(budgets, [100 * e["upsampled_fraction"] for e in entries], "x:", label="images upsampled", color="gray")
    _budget_axis(ax, budgets)
    ax.set(ylabel="% (padding of computed tokens; images)", ylim=(-2, 102), title=_title(result, "padding"))
    ax.legend(fontsize=8)
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
