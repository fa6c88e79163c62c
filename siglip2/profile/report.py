"""`siglip2 profile` output: the JSON document (schema in docs/naflex.md), warnings, the recommendation, the table."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import argparse

    from ..models.configuration import Siglip2VisionConfig
    from .stats import Image

SCHEMA_VERSION = 1
TRAINED_RANGE = (128, 1024)  # sequence lengths SigLIP2 NaFlex was trained on (interpolates well, extrapolates poorly)
MOSTLY_UPSAMPLED = 0.5


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


def recommend(entries: list[dict], max_drift: float | None, target: float | None) -> dict:
    """Smallest budget with 1 - drift_cosine_mean <= max_drift (with a model); largest budget whose packed
    images/s meets target (with timing); both: the smallest budget meeting both, else none (reason says why)."""
    has_drift = all("drift_cosine_mean" in e for e in entries)
    timed = all(e.get("timing") and "packed" in e["timing"] for e in entries)
    drift_ok = [e["max_num_patches"] for e in entries if has_drift and 1 - e["drift_cosine_mean"] <= max_drift]
    speed_ok = [
        e["max_num_patches"]
        for e in entries
        if timed and target is not None and e["timing"]["packed"]["images_per_s"] >= target
    ]
    if target is not None and not timed:
        return {"max_num_patches": None, "reason": "--target-images-per-s needs timing (it was off)"}
    if has_drift and target is not None:
        both = sorted(set(drift_ok) & set(speed_ok))
        if both:
            return {
                "max_num_patches": both[0],
                "reason": f"smallest budget with mean drift <= {max_drift} and packed "
                f"throughput >= {target:g} images/s",
            }
        return {
            "max_num_patches": None,
            "reason": f"no budget meets both: drift <= {max_drift} from "
            f"{min(drift_ok) if drift_ok else 'none'}, {target:g} images/s up to "
            f"{max(speed_ok) if speed_ok else 'none'}",
        }
    if has_drift:
        if drift_ok and max_drift is not None:  # (a non-empty drift_ok was compared against a number)
            return {
                "max_num_patches": min(drift_ok),
                "reason": f"smallest budget whose mean embedding cosine "
                f"against the largest budget is >= {1 - max_drift:g} (--max-drift {max_drift})",
            }
        return {"max_num_patches": None, "reason": f"no budget below the largest stays within --max-drift {max_drift}"}
    if target is not None:
        if speed_ok:
            return {
                "max_num_patches": max(speed_ok),
                "reason": f"largest budget whose packed throughput is >= {target:g} images/s",
            }
        return {"max_num_patches": None, "reason": f"no budget reaches {target:g} images/s packed"}
    return {
        "max_num_patches": None,
        "reason": "no criterion: pass --model (quality drift) or --target-images-per-s (throughput)",
    }


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
) -> dict:
    for e in entries:
        e["warnings"] = _warnings(e)
    px = np.array([im.height * im.width for im in images], dtype=np.float64)
    has_drift = "drift_cosine_mean" in entries[0]
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
        },
        "settings": {
            "max_num_patches": [e["max_num_patches"] for e in entries],
            "batch_size": batch,
            "repeats": args.repeats,
            "timing": entries[0].get("timing") is not None,
            "timing_note": timing_note,
            "max_drift": args.max_drift if has_drift else None,
            "target_images_per_s": args.target_images_per_s,
            "quality_images": min(args.quality_images, len(images)) if has_drift else None,
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
        r += [_g(t[m]["images_per_s"]) if m in t else "-" for m in modes]
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
            + f"; batch of {s['batch_size']} images (the same sample at every budget), median time"
        )
    if s["timing_note"]:
        out.append(s["timing_note"])
    for w in result["warnings"]:
        out.append(f"warning: {w}")
    rec = result["recommendation"]
    out.append(
        f"recommendation: max_num_patches {rec['max_num_patches']} ({rec['reason']})"
        if rec["max_num_patches"] is not None
        else f"recommendation: none ({rec['reason']})"
    )
    return "\n".join(out)
