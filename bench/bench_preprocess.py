"""Benchmark: NaFlex image preprocessing (decode excluded): resize to the patch budget, rescale/normalize,
patchify, pad.

Providers: `ours-pil` (Siglip2ImageProcessor: PIL resize + numpy), `ours-torch-cpu` / `ours-torch-cuda` (the
batched torch path: Pillow-exact fixed-point resampling; CUDA inputs already on the device) and
`transformers-pil` (Siglip2ImageProcessorPil, the baseline for `speedup`). Rows carry ms (median per batch),
images/s and, for the torch path, `max_abs_diff` against ours-pil on the same batch (expected 0.0: bit-exact).
Work model: no FLOP figure; the cost is dominated by the resampling passes over the input pixels
(~ H*W*3 * taps reads per pass), so images/s is the figure of merit.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench_ms, speedup


def _cases(quick: bool):
    rng = np.random.default_rng(0)
    if quick:
        arrays = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(4)]
        return [(f"4x 120x160 M={m}", arrays, m) for m in (64, 128, 256, 576)]  # 4 budgets: a trend on CPU
    mixed = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for h, w in [
            (480, 640),
            (640, 480),
            (1080, 1920),
            (224, 224),
            (1024, 768),
            (300, 451),
            (427, 640),
            (512, 512),
        ]
    ] * 2
    return [
        ("32x 480x640 M=256", [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(32)], 256),
        (
            "8x 1080x1920 M=1024",
            [rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8) for _ in range(8)],
            1024,
        ),
        ("16 mixed sizes M=256", mixed, 256),
    ]


def run(args) -> list[dict]:
    import PIL.Image

    from siglip2.processing.image_processing import Siglip2ImageProcessor

    try:
        from transformers import Siglip2ImageProcessorPil
    except ImportError as e:  # transformers is a test-only dependency: its row says why it is missing
        Siglip2ImageProcessorPil, missing = None, f"skipped: transformers' processor did not import ({e})"
    rows = []
    rep = 3 if args.quick else 10
    pil_proc, torch_proc = Siglip2ImageProcessor(), Siglip2ImageProcessor(backend="torch")
    for case, arrays, M in _cases(args.quick):
        pils = [PIL.Image.fromarray(a) for a in arrays]
        cpu_tensors = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arrays]
        ref = pil_proc(pils, max_num_patches=M)["pixel_values"]
        providers = [("ours-pil", "cpu", lambda pils=pils, M=M: pil_proc(pils, max_num_patches=M))]
        providers.append(("ours-torch-cpu", "cpu", lambda ts=cpu_tensors, M=M: torch_proc(ts, max_num_patches=M)))
        if args.device == "cuda" and torch.cuda.is_available():
            cuda_tensors = [t.cuda() for t in cpu_tensors]
            providers.append(
                ("ours-torch-cuda", "cuda", lambda ts=cuda_tensors, M=M: torch_proc(ts, max_num_patches=M))
            )
        if Siglip2ImageProcessorPil is not None:
            hf = Siglip2ImageProcessorPil()
            providers.append(
                (
                    "transformers-pil",
                    "cpu",
                    lambda hf=hf, pils=pils, M=M: hf(pils, max_num_patches=M, return_tensors="pt"),
                )
            )
        if Siglip2ImageProcessorPil is None:
            rows.append(
                {"op": "preprocess", "case": case, "provider": "transformers-pil", "mode": "fwd", "note": missing}
            )
        timings = {}
        for name, dev, fn in providers:
            ms = bench_ms(fn, warmup=1, rep=rep, device=dev)
            timings[name] = ms
            row = {
                "op": "preprocess",
                "case": case,
                "provider": name,
                "mode": "fwd",
                "ms": ms,
                "images_per_s": len(arrays) / (ms * 1e-3),
            }
            if name.startswith("ours-torch"):
                row["max_abs_diff"] = (fn()["pixel_values"].cpu() - ref).abs().max().item()
            rows.append(row)
        base = timings.get("transformers-pil")
        for row in rows:
            if row["case"] == case and base:
                row["speedup"] = speedup(base, row["ms"])
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    a.dtype = torch.float32
    for r in run(a):
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})
