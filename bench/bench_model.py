"""Whole vision tower: images/s of siglip2.fast vs the reference impl and transformers (sdpa), NaFlex inputs;
plus transformers' own model with our kernels: the "siglip2_triton" attention backend (`register()`, padded, every
layer through padded_attention) and `patch_transformers` (the packed path on the model's own parameters).

FLOP model (forward): per layer and valid token, 2*(4*D^2 + 2*D*I) for the projections and MLP, plus 4*s*D for
attention over the s valid tokens of its image; plus the patch embedding 2*K*D per token. Padding tokens are not
counted (they are useful work for nobody), so padded baselines show lower TFLOP/s for the same images.
Cases: So400m/16 (D=1152, 27 layers, MLP 4304, 16 heads of 72) and B/16 at max_num_patches 256, batch 256 on CUDA;
a tiny config on CPU. Images get a realistic mix of aspect ratios (grids from the NaFlex resize of 4:3, 3:4, 16:9, 1:1).
"""

from __future__ import annotations

import copy
import math
import os

import common
import torch

SO400M = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    patch_size=16,
    num_patches=256,
)
B16 = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    patch_size=16,
    num_patches=256,
)
TINY = dict(
    hidden_size=64, intermediate_size=134, num_hidden_layers=2, num_attention_heads=4, patch_size=4, num_patches=16
)


def grid_for(h_px, w_px, p, max_patches):
    """transformers' NaFlex target grid: binary search on the scale (upstream-spec.md section 4.1)."""
    lo, hi = 1e-6, 100.0
    while hi - lo >= 1e-5:
        mid = (lo + hi) / 2
        gh, gw = max(1, math.ceil(h_px * mid / p)), max(1, math.ceil(w_px * mid / p))
        lo, hi = (mid, hi) if gh * gw <= max_patches else (lo, mid)
    return max(1, math.ceil(h_px * lo / p)), max(1, math.ceil(w_px * lo / p))


def naflex_batch(B, L, cfg, device, dtype, seed=0):
    aspects = [(480, 640), (640, 480), (1080, 1920), (512, 512), (300, 1000)]
    g = torch.Generator().manual_seed(seed)
    shapes = [grid_for(*aspects[i % len(aspects)], cfg["patch_size"], L) for i in range(B)]
    K = 3 * cfg["patch_size"] ** 2
    pv = torch.zeros(B, L, K)
    mask = torch.zeros(B, L, dtype=torch.int32)
    for i, (h, w) in enumerate(shapes):
        pv[i, : h * w] = torch.randn(h * w, K, generator=g)
        mask[i, : h * w] = 1
    return pv.to(device, dtype), mask.to(device), torch.tensor(shapes, device=device), shapes


def flops(cfg, shapes):
    D, I, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    K = 3 * cfg["patch_size"] ** 2
    tokens = sum(h * w for h, w in shapes)
    attn = sum(4 * (h * w) ** 2 * D for h, w in shapes)
    return n * (tokens * 2 * (4 * D * D + 2 * D * I) + attn) + tokens * 2 * K * D


def run(args):
    import transformers

    import siglip2.fast as fast
    import siglip2.reference as ref

    env = common.environment()
    cases = (
        [("tiny", TINY, 8, L) for L in (16, 32, 64, 128)]  # 4 budgets: a trend on CPU in a few seconds
        if args.quick
        else [("So400m/16", SO400M, 256, 256), ("B/16", B16, 256, 256), ("B/16", B16, 64, 1024)]
    )
    peak = common.peak_for(env, "bf16_tflops")
    rows = []
    for name, cfg, B, L in cases:
        hf_cfg = transformers.Siglip2VisionConfig(**cfg)
        torch.manual_seed(0)
        hf = transformers.Siglip2VisionModel(hf_cfg).to(args.device, args.dtype).eval()
        models = {"transformers-sdpa": hf}
        # the same transformers model with our kernels: the attention backend, and the packed module patch
        fast.register()
        backend = copy.deepcopy(hf)
        backend.set_attn_implementation("siglip2_triton")
        models["transformers+siglip2_triton"] = backend
        patched = copy.deepcopy(hf)
        fast.patch_transformers(patched)
        models["transformers+patch_transformers"] = patched
        for label, mod in (("fast", fast), ("reference", ref)):
            m = mod.Siglip2VisionModel(hf_cfg)
            m.load_state_dict(hf.state_dict())
            models[label] = m.to(args.device, args.dtype).eval()
        pv, mask, ss, shapes = naflex_batch(B, L, cfg, args.device, args.dtype)
        fl = flops(cfg, shapes)
        times = {}
        for label, m in models.items():
            note = None
            if args.device == "cpu" and label != "transformers-sdpa" and label != "reference":
                path = "padded, attention backend" if label == "transformers+siglip2_triton" else "packed path"
                note = f"{path}; kernels via " + (
                    "the interpreter" if os.environ.get("TRITON_INTERPRET") else "their PyTorch references on CPU"
                )

            def fn(m=m, pv=pv, mask=mask, ss=ss):
                with torch.no_grad():
                    return m(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=ss).pooler_output

            ms = common.bench_ms(fn, device=args.device, rep=5 if args.quick else 20)
            times[label] = ms
            tf = fl / (ms * 1e-3) / 1e12
            rows.append(
                dict(
                    op="model",
                    case=f"{name} B={B} L={L}",
                    provider=label,
                    mode="fwd",
                    ms=ms,
                    tflops=tf,
                    pct_peak=(100 * tf / peak) if peak else None,
                    images_per_s=B / (ms * 1e-3),
                    peak_mem_mb=common.peak_mem_mb(fn, args.device),
                    note=note,
                )
            )
        for r in rows[-len(models) :]:
            r["speedup"], r["baseline"] = common.speedup(times["transformers-sdpa"], r["ms"]), "transformers-sdpa"
    return rows


if __name__ == "__main__":
    import argparse

    a = argparse.Namespace(device="cuda" if torch.cuda.is_available() else "cpu", quick=not torch.cuda.is_available())
    a.dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    for r in run(a):
        print(r)
