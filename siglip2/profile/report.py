"""`siglip2 profile` output: the JSON document (schema in docs/naflex.md), warnings, the recommendation, the table."""

from __future__ import annotations

import itertools
import json
import os
from typing import TYPE_CHECKING

import numpy as np

from .timing import NOISY_IQR

if TYPE_CHECKING:
    import argparse

    from ..models.configuration import Siglip2VisionConfig
    from .stats import Image

SCHEMA_VERSION = 1
TRAINED_RANGE = (128, 1024)  # sequence lengths SigLIP2 NaFlex was trained on (interpolates well, extrapolates poorly)
MOSTLY_UPSAMPLED = 0.5
SHOW_UNREADABLE = 20  # unreadable files listed in the text report (all of them are in the JSON)


def _warnings(e: dict) -> list[str]:
    m, out = e["max_num_patches"], []
    if not TRAINED_RANGE[0] <= m <= TRAINED_RANGE[1]:
        out.append(
            f"max_num_patches {m} is outside the {TRAINED_RANGE[0]}-{TRAINED_RANGE[1]} tokens SigLIP2 NaFlex "
            f"was trained on: the models interpolate between trained lengths well and extrapolate poorly"
        )
    if e["upsampled_fraction"] > MOSTLY_UPSAMPLED:
        out.append(
            f"max_num_patches {m}: {100 * e['upsampled_fraction']:.0f}% of the images are upsampled (the "
            f"budget asks for more pixels than they have): tokens spent on no new detail"
        )
    return out


def _rate(t: dict) -> tuple[float, float, float]:
    """(median, low, high) images/s of one timing entry; low..high is the interquartile range (the median alone
    when the entry carries no spread)."""
    v = t["images_per_s"]
    return v, t.get("images_per_s_lo", v), t.get("images_per_s_hi", v)


def timing_verdict(entries: list[dict]) -> tuple[bool, str | None]:
    """(usable, why not) for the packed timings: unusable when one of them is noisy (interquartile range over
    NOISY_IQR of its median) or when a budget with more FLOPs per image runs more images/s than a smaller one
    beyond both spreads (a contradiction that only contention or a cold cache produces)."""
    timed = [e for e in entries if e.get("timing") and "packed" in e["timing"]]
    noisy = [e["max_num_patches"] for e in timed if e["timing"]["packed"].get("noisy")]
    if noisy:
        return False, (
            f"packed timings noisy at max_num_patches {', '.join(map(str, noisy))} (interquartile range over "
            f"{100 * NOISY_IQR:.0f}% of the median)"
        )
    for a, b in itertools.pairwise(timed):  # ascending budgets: the cost per image only grows
        _, _, hi_a = _rate(a["timing"]["packed"])
        _, lo_b, _ = _rate(b["timing"]["packed"])
        # beyond both spreads and by more than the noise threshold: GPU spreads are tight enough that two
        # launch-bound small budgets would otherwise "contradict" each other on jitter alone
        if lo_b > hi_a * (1 + NOISY_IQR):
            return False, (
                f"packed timings contradict the FLOPs: max_num_patches {b['max_num_patches']} ran more images/s "
                f"than {a['max_num_patches']} beyond both spreads"
            )
    return True, None


def flop_rate(entries: list[dict]) -> float | None:
    """The pooled packed FLOP rate (FLOP/s): the median over budgets of images/s x FLOPs per image. Noise in one
    budget's timing moves a median of all of them little, and the FLOP model orders the budgets exactly."""
    rates = [
        e["timing"]["packed"]["images_per_s"] * e["flops_per_image_packed"]["total"]
        for e in entries
        if e.get("timing") and "packed" in e["timing"] and "flops_per_image_packed" in e
    ]
    return float(np.median(rates)) if rates else None


def _by_resolution(entries: list[dict]) -> dict:
    """The model-free choice: the largest budget in the trained range at which at most MOSTLY_UPSAMPLED of the
    images are upsampled. Past it most of the added tokens interpolate pixels the images do not have, at a cost
    that grows faster than the tokens (attention)."""
    inside = [e for e in entries if TRAINED_RANGE[0] <= e["max_num_patches"] <= TRAINED_RANGE[1]] or entries
    kept = [e for e in inside if e["upsampled_fraction"] <= MOSTLY_UPSAMPLED]
    e = kept[-1] if kept else inside[0]
    where = f"the trained {TRAINED_RANGE[0]}-{TRAINED_RANGE[1]} range" if inside is not entries else "the budgets"
    why = (
        f"from image sizes alone: the largest budget in {where} at which at most {100 * MOSTLY_UPSAMPLED:.0f}% of "
        f"the images are upsampled (larger ones mostly add tokens for pixels the images do not have)"
        if kept
        else f"from image sizes alone: every budget in {where} upsamples most images, so the smallest"
    )
    why += f"; there {100 * e['upsampled_fraction']:.0f}% upsampled, aspect error {100 * e['aspect_error_mean']:.1f}%"
    return {"max_num_patches": e["max_num_patches"], "reason": why}


def recommend(entries: list[dict], max_drift: float | None, target: float | None) -> dict:
    """The budget to use, and why: {"max_num_patches", "reason", "basis", "sharpen"}.

    Quality: with a model, the smallest budget with 1 - drift_cosine_mean + drift_cosine_ci95 <= max_drift (the
    drift's upper 95% confidence bound); without one, the largest
    budget worth its tokens by image sizes alone (`_by_resolution`). Throughput (--target-images-per-s): the largest
    budget whose packed images/s meets the target, measured when the timings are usable (`timing_verdict`), else
    estimated from FLOPs per image at the pooled FLOP rate. Both: the smallest budget meeting both, else none.
    "basis" names what the choice rests on; "sharpen" lists the inputs that would make it better founded."""
    has_drift = bool(entries) and all("drift_cosine_mean" in e for e in entries)
    timed = bool(entries) and all(e.get("timing") and "packed" in e["timing"] for e in entries)
    sharpen, unused = [], ""
    # a drift needs something to drift from (a second budget) and a confidence bound (two decoded images)
    if has_drift and (len(entries) < 2 or any(e.get("drift_cosine_ci95", 0.0) is None for e in entries)):
        has_drift = False
        unused = "; the drift was not used: it needs two budgets or more and two decoded images or more"
        sharpen.append("--quality-images N (N >= 2 decodable images) and two budgets or more: a drift to go by")
    if not has_drift:
        sharpen.append("--model DIR: the embedding drift of each budget against the largest (quality, measured)")
    if target is None:
        sharpen.append(
            "--target-images-per-s R" + ("" if timed else " and timing (a GPU, or --timing)") + ": a throughput bound"
        )

    def out(m, reason, basis):
        return {"max_num_patches": m, "reason": reason + unused, "basis": basis, "sharpen": sharpen}

    if target is not None and not timed:
        return out(None, "--target-images-per-s needs timing (it was off)", [])
    speed_ok, speed_basis, speed_note = [], [], ""
    if target is not None:
        usable, why = timing_verdict(entries)
        rate = None if usable else flop_rate(entries)
        if usable:
            speed_ok = [e["max_num_patches"] for e in entries if e["timing"]["packed"]["images_per_s"] >= target]
            speed_basis = ["measured packed images/s"]
        elif rate is not None:
            est = {e["max_num_patches"]: rate / e["flops_per_image_packed"]["total"] for e in entries}
            speed_ok = [m for m, v in est.items() if v >= target]
            speed_basis = ["FLOPs per image at the pooled packed FLOP rate"]
            speed_note = f" ({why}: images/s estimated from FLOPs per image at {rate / 1e9:,.3g} GFLOP/s)"
        else:
            return out(None, f"{why}, and no FLOP counts to fall back on", [])
    # the drift's upper 95% confidence bound, not its mean: a sample of images must not make a budget look safe
    drift_ok = [
        e["max_num_patches"]
        for e in entries
        if has_drift and 1 - e["drift_cosine_mean"] + e.get("drift_cosine_ci95", 0.0) <= max_drift
    ]
    if has_drift and target is not None:
        both = sorted(set(drift_ok) & set(speed_ok))
        if both:
            return out(
                both[0],
                f"smallest budget whose drift (upper 95% bound) is <= {max_drift} and packed throughput >= "
                f"{target:g} images/s" + speed_note,
                ["embedding drift", *speed_basis],
            )
        return out(
            None,
            f"no budget meets both: drift (upper 95% bound) <= {max_drift} from "
            f"{min(drift_ok) if drift_ok else 'none'}, "
            f"{target:g} images/s up to {max(speed_ok) if speed_ok else 'none'}" + speed_note,
            ["embedding drift", *speed_basis],
        )
    if has_drift:
        if drift_ok and max_drift is not None:  # (a non-empty drift_ok was compared against a number)
            return out(
                min(drift_ok),
                f"smallest budget whose mean embedding cosine against the largest budget is >= {1 - max_drift:g} "
                f"at its lower 95% confidence bound (--max-drift {max_drift})",
                ["embedding drift"],
            )
        return out(None, f"no budget below the largest stays within --max-drift {max_drift}", ["embedding drift"])
    if target is not None:
        if speed_ok:
            return out(
                max(speed_ok),
                f"largest budget whose packed throughput is >= {target:g} images/s" + speed_note,
                speed_basis,
            )
        return out(None, f"no budget reaches {target:g} images/s packed" + speed_note, speed_basis)
    if entries and all("upsampled_fraction" in e for e in entries):
        r = _by_resolution(entries)
        return out(r["max_num_patches"], r["reason"], ["image sizes (upsampled fraction, aspect error)"])
    return out(None, "no criterion: pass --model (quality drift) or --target-images-per-s (throughput)", [])


def assemble(
    entries: list[dict],
    *,
    env: dict,
    model_label: str,
    cfg: Siglip2VisionConfig,
    images: list[Image],
    synthetic: int,
    batch: int,
    args: argparse.Namespace,
    timing_note: str | None,
    unreadable: list[dict] | None = None,
) -> dict:
    """The JSON document of one profile (schema in docs/naflex.md). `unreadable`: the files skipped, each
    {"path", "error", "stage"} ("scan": the header; "decode": the pixels, in the drift measurement)."""
    unreadable = unreadable or []
    for e in entries:
        e["warnings"] = _warnings(e)
    px = np.array([im.height * im.width for im in images], dtype=np.float64)
    has_drift = "drift_cosine_mean" in entries[0]
    timed = all(e.get("timing") and "packed" in e["timing"] for e in entries)
    rec = recommend(entries, args.max_drift if has_drift else None, args.target_images_per_s)
    m = rec["max_num_patches"]
    if m is not None and not TRAINED_RANGE[0] <= m <= TRAINED_RANGE[1]:
        rec["reason"] += f"; note: outside the trained {TRAINED_RANGE[0]}-{TRAINED_RANGE[1]} range"
    return {
        "schema_version": SCHEMA_VERSION,
        "environment": env,
        "model": {
            "source": model_label,
            **{
                k: getattr(cfg, k)
                for k in (
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "patch_size",
                    "num_patches",
                    "vision_use_head",
                )
            },
        },
        "inputs": {
            "images": len(images),
            "files": sum(im.path is not None for im in images),
            "synthetic": synthetic,
            "synthetic_distribution": "COCO-fitted (siglip2/profile/stats.py)" if synthetic else None,
            "native_pixels_p50": float(np.percentile(px, 50)),
            "seed": args.seed,
            "unreadable": unreadable,
        },
        "settings": {
            "max_num_patches": [e["max_num_patches"] for e in entries],
            "batch_size": batch,
            "repeats": args.repeats,
            "timing": entries[0].get("timing") is not None,
            "timing_note": timing_note,
            "timing_usable": timing_verdict(entries)[0] if timed else None,
            "max_drift": args.max_drift if has_drift else None,
            "target_images_per_s": args.target_images_per_s,
            # the images the drift was measured on: the sample, less any whose pixels did not decode
            "quality_images": entries[0].get("drift_images") if has_drift else None,
        },
        "budgets": entries,
        "warnings": [w for e in entries for w in e["warnings"]],
        "recommendation": rec,
    }


def write_json(result: dict, path: str) -> None:
    from ..checkpoints.loading import atomic_write_text

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    atomic_write_text(os.path.abspath(path), json.dumps(result, indent=1) + "\n")


def _g(v, digits=3):
    if v is None:
        return "-"
    return f"{v:.{digits}g}" if abs(v) < 10**digits else f"{v:,.0f}"


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def table(result: dict) -> str:
    entries, env, model = result["budgets"], result["environment"], result["model"]
    inp = result["inputs"]
    head = (
        f"# siglip2 profile: {inp['images']} images ({inp['files']} files, {inp['synthetic']} synthetic), "
        f"{model['source']} (D={model['hidden_size']}, {model['num_hidden_layers']} layers, patch "
        f"{model['patch_size']}), {env['torch_device']} {env['dtype']}, {env['device']}, torch {env['torch']}, "
        f"{env['date']}"
    )
    shapes = []
    for e in entries:
        n = e["images"]
        top = ", ".join(f"{h}x{w} {100 * c / n:.0f}%" for h, w, c in e["spatial_shapes_hist"][:3])
        tokens = f"{e['tokens_mean']:.0f} / {e['tokens_p50']:.0f} / {e['tokens_p95']:.0f}"
        shapes.append(
            [
                str(e["max_num_patches"]),
                tokens,
                f"{100 * e['padding_fraction_padded']:.1f}%",
                f"{100 * e['padding_fraction_packed']:.1f}%",
                f"{100 * e['upsampled_fraction']:.0f}%",
                f"{100 * e['aspect_error_mean']:.1f}% / {100 * e['aspect_error_p95']:.1f}%",
                str(len(e["spatial_shapes_hist"])),
                top,
            ]
        )
    out = [
        head,
        "",
        "## shapes and padding",
        _md(
            [
                "max_num_patches",
                "tokens/img mean / p50 / p95",
                "padding padded",
                "padding packed",
                "upsampled",
                "aspect err mean / p95",
                "grids",
                "top spatial_shapes (h x w)",
            ],
            shapes,
        ),
    ]
    modes = [
        m for m in ("padded", "padded-sdpa", "packed") if any(e.get("timing") and m in e["timing"] for e in entries)
    ]
    rows = []
    for e in entries:
        f, fp = e["flops_per_image_packed"], e["flops_per_image_padded"]
        split = "{} ({} / {} / {})".format(*(_g(f[k] / 1e9) for k in ("total", "linear", "attention", "patch_embed")))
        r = [str(e["max_num_patches"]), split, _g(fp["total"] / 1e9)]
        t = e.get("timing") or {}
        r += [_spread(t[m]) if m in t else "-" for m in modes]
        if "packed" in t:
            r += [_g(t["packed"]["tokens_per_s"]), _g(t["packed"]["ms_per_batch"]), _g(t["packed"]["peak_mem_mb"])]
        elif modes:
            r += ["-", "-", "-"]
        if "drift_cosine_mean" in e:
            r.append(f"{e['drift_cosine_mean']:.4f} (min {e['drift_cosine_min']:.4f})")
        rows.append(r)
    header = ["max_num_patches", "GFLOP/img packed (linear / attn / patch)", "GFLOP/img padded"]
    header += [f"img/s {m}" for m in modes]
    if modes:
        header += ["tokens/s packed", "ms/batch packed", "peak MB packed"]
    if "drift_cosine_mean" in entries[0]:
        header.append("cosine vs largest (mean, min)")
    out += [
        "",
        "## compute" + (", timing" if modes else "") + (", quality" if "drift_cosine_mean" in entries[0] else ""),
        _md(header, rows),
    ]
    s = result["settings"]
    if modes:
        t0 = next(e["timing"] for e in entries if e.get("timing"))
        out.append(
            "timing: "
            + "; ".join(f"{m} = {t0[m]['impl']}" for m in modes)
            + f"; batch of {s['batch_size']} images (the same sample at every budget); img/s: median "
            f"(interquartile range) of n timed calls after a settled warm-up, '~' where the range exceeds "
            f"{100 * NOISY_IQR:.0f}% of the median"
        )
        usable, why = timing_verdict(entries)
        if not usable:
            out.append(f"timing unusable: {why}; cost comparisons rest on FLOPs per image instead")
    if s["timing_note"]:
        out.append(s["timing_note"])
    for w in result["warnings"]:
        out.append(f"warning: {w}")
    bad = result["inputs"].get("unreadable") or []
    if bad:
        out.append(f"skipped {len(bad)} unreadable file(s) (listed under inputs.unreadable in the JSON):")
        out += [f"  {b['path']}: {b['error']} ({b['stage']})" for b in bad[:SHOW_UNREADABLE]]
        if len(bad) > SHOW_UNREADABLE:
            out.append(f"  ... and {len(bad) - SHOW_UNREADABLE} more")
    rec = result["recommendation"]
    out.append(
        f"recommendation: max_num_patches {rec['max_num_patches']} ({rec['reason']})"
        if rec["max_num_patches"] is not None
        else f"recommendation: none ({rec['reason']})"
    )
    out += [f"  sharpen it with {s}" for s in rec.get("sharpen", [])]
    return "\n".join(out)


def _spread(t: dict) -> str:
    """images/s as "median (q1-q3 range of the rate) n=calls", '~' marking a noisy timing."""
    v, lo, hi = _rate(t)
    if "n" not in t:
        return _g(v)
    return f"{'~' if t.get('noisy') else ''}{_g(v)} ({_g(lo)}-{_g(hi)}) n={t['n']}"
