"""Benchmark: SigLIP sigmoid loss, forward + backward (all four gradients), time and peak memory.

FLOP model: 3 GEMMs of 2*n^2*d (logits, dL/dimage, dL/dtext) = 6*n^2*d per fwd+bwd, whatever the provider
actually executes (the materialized eager loss runs those 3 GEMMs plus ~10 elementwise n x n passes).
Providers: triton (siglip2.kernels.sigmoid_loss, gradients computed in the forward pass), eager
(kernels.reference.sigmoid_loss, transformers' materialized loss), compile (torch.compile of it) and
siglip_kernel 0.1.2 (its `fused_siglip_loss`, backend "auto") when importable; `pip install
bench/wheels/siglip_kernel-0.1.2-py3-none-any.whl` on the GPU machine. speedup = baseline ms / ms, where
the baseline is siglip_kernel when it ran for that case, else eager. Materialized providers are skipped
with a row saying so when their n x n buffers cannot fit. On CPU (quick) the Triton provider runs through
the interpreter at one tiny size only.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench_ms, environment, peak_for, peak_mem_mb, speedup

from siglip2.kernels import reference
from siglip2.kernels.loss import sigmoid_loss

OP = "sigmoid_loss"


def _siglip_kernel():
    try:
        import siglip_kernel
    except ImportError:
        wheel = os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "wheels", "siglip_kernel-0.1.2-py3-none-any.whl"
        )
        if not os.path.exists(wheel):
            return None
        sys.path.append(wheel)  # a pure-Python wheel imports straight from the zip
        try:
            import siglip_kernel
        except Exception:  # it probes the GPU at import time
            return None
    except Exception:
        return None
    return siglip_kernel


def _inputs(n, d, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(n + d)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(img + torch.randn(n, d, generator=g), dim=-1)
    scale = torch.tensor([4.7476])  # the B/16 NaFlex checkpoint's parameters, shape (1,) like transformers'
    bias = torch.tensor([-16.777])
    return [x.to(device=device, dtype=dtype).requires_grad_() for x in (img, txt, scale, bias)]


def _providers(device, siglip_kernel):
    provs = {
        "triton": lambda i, t, s, b: sigmoid_loss(i, t, s, b, impl="triton"),
        "eager": reference.sigmoid_loss,
        "compile": torch.compile(reference.sigmoid_loss, dynamic=False),
    }
    if siglip_kernel is not None and device == "cuda":
        provs["siglip_kernel"] = lambda i, t, s, b: siglip_kernel.fused_siglip_loss(i, t, s, b)
    return provs


def _materialized_fits(n, device) -> bool:
    if device != "cuda":
        return n <= 8192
    free, _ = torch.cuda.mem_get_info()
    return 12 * n * n < 0.9 * free  # ~3 live n x n fp32/bf16 buffers in the eager backward


def run(args) -> list[dict]:
    device, dtype = args.device, args.dtype
    env = environment()
    peak_key = {torch.bfloat16: "bf16_tflops", torch.float16: "fp16_tflops"}.get(dtype, "fp32_tflops")
    peak = peak_for(env, peak_key)
    if args.quick or device != "cuda":
        cases = [(n, 64) for n in (128, 256, 512, 1024)]  # 4 sizes: a trend on CPU in a few seconds
    else:
        cases = [(n, d) for d in (768, 1152) for n in (4096, 16384, 65536, 262144)]
    sk = _siglip_kernel() if device == "cuda" else None
    provs = _providers(device, sk)
    rows = []
    for n, d in cases:
        xs = _inputs(n, d, dtype, device)
        flops = 6.0 * n * n * d
        case = f"n{n}-d{d}-{str(dtype).replace('torch.', '')}"
        case_rows = []
        for name, fn in provs.items():
            row = dict(op=OP, case=case, provider=name, mode="fwd+bwd")
            if name == "triton" and device != "cuda" and not os.environ.get("TRITON_INTERPRET"):
                case_rows.append({**row, "ms": None, "note": "skipped: Triton on CPU needs TRITON_INTERPRET=1"})
                continue
            if name == "triton" and device != "cuda" and n > 128:
                case_rows.append({**row, "ms": None, "note": "interpreter too slow on CPU beyond n=128"})
                continue
            if name in ("eager", "compile") and not _materialized_fits(n, device):
                case_rows.append(
                    {**row, "ms": None, "note": f"skipped: the n x n logits ({n}^2) would not fit in memory"}
                )
                continue

            def step(fn=fn, xs=xs):
                loss = fn(*xs)
                return torch.autograd.grad(loss, xs)

            try:
                ms = bench_ms(step, device=device, warmup=1, rep=3)  # CUDA: do_bench picks its own reps
                mem = peak_mem_mb(step, device=device)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                case_rows.append({**row, "ms": None, "note": "out of memory"})
                continue
            tflops = flops / (ms * 1e-3) / 1e12
            case_rows.append(
                {
                    **row,
                    "ms": ms,
                    "tflops": tflops,
                    "peak_mem_mb": mem,
                    "pct_peak": 100 * tflops / peak if peak else None,
                }
            )
        base = next((r for r in case_rows if r["provider"] == "siglip_kernel" and r.get("ms")), None) or next(
            (r for r in case_rows if r["provider"] == "eager" and r.get("ms")), None
        )
        for r in case_rows:
            if base is not None and r.get("ms"):
                r["speedup"] = speedup(base["ms"], r["ms"])
                r["baseline"] = base["provider"]
        rows += case_rows
        del xs
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    a.dtype = getattr(torch, a.dtype)
    if a.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
        if a.dtype == torch.bfloat16:
            a.dtype = torch.float32  # CPU matmuls and the interpreter: fp32
    print(environment())
    for r in run(a):
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
