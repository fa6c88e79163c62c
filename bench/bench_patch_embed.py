"""Benchmark of `naflex_patch_embed` (linear patch embedding + per-image antialiased position resize).

Byte model (each tensor read or written once): pixels B*L*K + weight D*K + output B*L*D + position table G*G*D
(+ bias D), in the tensors' own dtypes; gbps = bytes / time. FLOP model: the linear, 2*B*L*K*D (the resize adds
at most a few % on top and is not counted). The roofline time is max(bytes / measured copy bandwidth,
flops / dense bf16 peak); pct_peak = 100 * roofline / measured time, so 100% means the memory or GEMM limit,
whichever binds (at K = 768 the GEMM binds on H100 once D >= ~700). speedup = transformers' time / provider's.

Providers:
  triton        siglip2.kernels.naflex_patch_embed(impl="triton"), spatial_shapes on the GPU (eager validation
                costs one host sync per call)
  triton-cpu-ss the same with spatial_shapes on the CPU (validation without a sync, non-blocking H2D copy)
  transformers  transformers' Siglip2VisionEmbeddings: a Python loop with one F.interpolate and one host sync
                per image (the baseline)
  eager-vec     a vectorized eager version written here: per-token separable weights (B, L, G) x (B, L, G)
                -> (B*L, G*G) @ pos_embed, plus F.linear; no loop, no sync
Modes: fwd, and fwd+bwd (all four gradients) on a subset of cases.
Cases: B in {32, 64, 128, 256} x max_num_patches in {256, 1024, 4096} x D in {768, 1152}, K = 3*16*16, G = 16,
aspect ratios drawn log-uniformly in [1/4, 4] and fit into max_num_patches (as the NaFlex processor does).
On CPU (`quick`), tiny sizes; the Triton provider runs only under TRITON_INTERPRET (a tiny case), else a row
says why it was skipped.
"""

from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench_ms, environment, measured_copy_gbps, peak_for, peak_mem_mb, speedup

OP = "naflex_patch_embed"


# ----------------------------------------------------------------------------------------------
# Inputs and providers
# ----------------------------------------------------------------------------------------------


def naflex_shapes(B: int, max_patches: int, seed: int = 0):
    """(h, w) per image: a log-uniform aspect ratio in [1/4, 4], as many patches as fit in max_patches."""
    g = torch.Generator().manual_seed(seed)
    shapes = []
    for _ in range(B):
        r = math.exp((torch.rand(1, generator=g).item() * 2 - 1) * math.log(4))
        h = max(1, int(math.sqrt(max_patches * r)))
        w = max(1, min(max_patches // h, int(max_patches / h)))
        shapes.append((min(h, max_patches), w))
    return shapes


def make_inputs(B, L, D, dtype, device, K=768, G=16, seed=0):
    torch.manual_seed(seed)
    shapes = naflex_shapes(B, L, seed)
    pixel_values = torch.randn(B, L, K, device=device, dtype=dtype)
    weight = (torch.randn(D, K, device=device) / math.sqrt(K)).to(dtype)
    bias = torch.randn(D, device=device, dtype=dtype)
    pos_embed = torch.randn(G * G, D, device=device, dtype=dtype)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device)
    return pixel_values, spatial_shapes, weight, bias, pos_embed


def _axis_weights(o, n, G):
    """(..., G) antialiased triangle weights of output index o on an axis of n outputs from G inputs, fp32."""
    scale = G / n.float()
    inv = 1.0 / scale.clamp(min=1.0)
    center = scale * (o.float() + 0.5)
    j = torch.arange(G, device=o.device, dtype=torch.float32)
    w = (1 - ((j + 0.5 - center[..., None]) * inv[..., None]).abs()).clamp(min=0)
    return w / w.sum(-1, keepdim=True)


def eager_vectorized(pixel_values, spatial_shapes, weight, bias, pos_embed):
    """No loop, no host sync: per-token separable weights, one (B*L, G*G) @ (G*G, D) matmul for the positions."""
    B, L, _ = pixel_values.shape
    G = math.isqrt(pos_embed.shape[0])
    h, w = spatial_shapes[:, 0:1], spatial_shapes[:, 1:2]  # (B, 1)
    t = torch.arange(L, device=pixel_values.device)[None, :]  # (1, L)
    valid = t < h * w
    y, x = torch.where(valid, t // w, 0), torch.where(valid, t % w, 0)  # padding rows sit at (0, 0)
    wy = _axis_weights(y, h.expand(B, L), G)  # (B, L, G)
    wx = _axis_weights(x, w.expand(B, L), G)
    a = (wy[..., :, None] * wx[..., None, :]).reshape(B, L, G * G)
    pos = (a @ pos_embed.float()).to(pos_embed.dtype)  # (B, L, D)
    return torch.nn.functional.linear(pixel_values.to(weight.dtype), weight, bias) + pos


def transformers_module(D, dtype, device, weight, bias, pos_embed, G=16, P=16):
    from transformers import Siglip2VisionConfig
    from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

    cfg = Siglip2VisionConfig(hidden_size=D, num_channels=weight.shape[1] // (P * P), patch_size=P, num_patches=G * G)
    m = Siglip2VisionEmbeddings(cfg).to(device=device, dtype=dtype)
    with torch.no_grad():
        m.patch_embedding.weight.copy_(weight)
        m.patch_embedding.bias.copy_(bias)
        m.position_embedding.weight.copy_(pos_embed)
    return m


def providers(inputs, device, dtype):
    from siglip2.kernels.patch_embed import naflex_patch_embed

    _x, s, w, b, p = inputs
    D, K = w.shape
    P = math.isqrt(K // 3)
    out = {}
    interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")  # as bench_attention.py
    if device == "cuda" or interp:
        out["triton"] = lambda x, s, w, b, p: naflex_patch_embed(x, s, w, b, p, impl="triton")
        s_cpu = s.cpu()
        out["triton-cpu-ss"] = lambda x, s, w, b, p: naflex_patch_embed(x, s_cpu, w, b, p, impl="triton")
    mod = transformers_module(D, dtype, device, w, b, p, G=math.isqrt(p.shape[0]), P=P)

    # the module uses its own (identical) parameters; their gradients land in mod's .grad
    out["transformers"] = lambda x, s, w, b, p: mod(x, s)
    out["eager-vec"] = eager_vectorized
    return out


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def _bytes(inputs):
    x, _, w, b, p = inputs
    B, L, _K = x.shape
    D = w.shape[0]
    return (
        x.numel() * x.element_size()
        + w.numel() * w.element_size()
        + b.numel() * b.element_size()
        + p.numel() * p.element_size()
        + B * L * D * w.element_size()
    )


def _measure(fn, inputs, mode, device):
    x, s, w, b, p = inputs
    if mode == "fwd":

        def call():
            with torch.no_grad():
                return fn(x, s, w, b, p)
    else:
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, b, p)]
        grad = torch.randn(x.shape[0], x.shape[1], w.shape[0], device=device, dtype=w.dtype)

        def call():
            for t in leaves:
                t.grad = None
            fn(leaves[0], s, leaves[1], leaves[2], leaves[3]).backward(grad)

    rep = 3 if device == "cpu" else 20
    return bench_ms(call, warmup=1, rep=rep, device=device), peak_mem_mb(call, device)


def cases(quick: bool, device: str):
    if quick:
        # 4 batch sizes: a trend on CPU in a few seconds; fwd+bwd at one of them
        return [
            dict(B=B, L=64, D=64, K=48, G=4, modes=("fwd", "fwd+bwd") if B == 2 else ("fwd",)) for B in (1, 2, 4, 8)
        ]
    out = []
    for D in (768, 1152):
        for L in (256, 1024, 4096):
            for B in (32, 64, 128, 256):
                modes = ("fwd", "fwd+bwd") if B in (32, 128) and L == 1024 else ("fwd",)
                out.append(dict(B=B, L=L, D=D, K=768, G=16, modes=modes))
    return out


def run(args) -> list[dict]:
    device, dtype, quick = args.device, args.dtype, args.quick
    env = environment()
    copy_gbps = measured_copy_gbps(device)
    peak_tflops = peak_for(env, "bf16_tflops")
    rows = []
    for c in cases(quick, device):
        inputs = make_inputs(c["B"], c["L"], c["D"], dtype, device, K=c["K"], G=c["G"])
        nbytes, flops = _bytes(inputs), 2.0 * c["B"] * c["L"] * c["K"] * c["D"]
        roofline_ms = None
        if copy_gbps and peak_tflops:
            roofline_ms = max(nbytes / (copy_gbps * 1e9), flops / (peak_tflops * 1e12)) * 1e3
        name = f"B{c['B']}-L{c['L']}-D{c['D']}-K{c['K']}-G{c['G']}"
        provs = providers(inputs, device, dtype)
        for mode in c["modes"]:
            base_ms, found = None, []
            for prov, fn in provs.items():
                if device == "cpu" and prov.startswith("triton") and c["B"] * c["L"] > 256:
                    continue
                ms, mem = _measure(fn, inputs, mode, device)
                mult = 3.0 if mode == "fwd+bwd" else 1.0  # backward ~ 2 GEMMs more
                row = dict(
                    op=OP,
                    case=name,
                    provider=prov,
                    mode=mode,
                    ms=ms,
                    gbps=(nbytes / (ms * 1e-3) / 1e9) if mode == "fwd" else None,
                    tflops=mult * flops / (ms * 1e-3) / 1e12,
                    pct_peak=(100 * roofline_ms / ms) if roofline_ms and mode == "fwd" else None,
                    peak_mem_mb=mem,
                )
                if prov == "transformers":
                    base_ms = ms
                found.append(row)
            for row in found:
                row["speedup"] = speedup(base_ms, row["ms"]) if base_ms else None
            rows += found
            if not any(r["provider"] == "triton" for r in found):
                rows.append(
                    dict(
                        op=OP,
                        case=name,
                        provider="triton",
                        mode=mode,
                        ms=None,
                        note="skipped: Triton needs CUDA, or TRITON_INTERPRET=1 on CPU (then tiny cases only)",
                    )
                )
        del inputs
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def check(args) -> None:
    """Quick correctness check of every provider against the package reference (used before timing)."""
    from siglip2.kernels import reference

    inputs = make_inputs(3, 64, 64, torch.float32, args.device, K=48, G=4)
    ref = reference.naflex_patch_embed(*inputs)
    for prov, fn in providers(inputs, args.device, torch.float32).items():
        with torch.no_grad():
            out = fn(*inputs)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4, msg=lambda m, prov=prov: f"{prov}: {m}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    ap.add_argument("--quick", action="store_true", help="tiny CPU-sized cases")
    a = ap.parse_args()
    a.dtype = getattr(torch, a.dtype)
    a.quick = a.quick or a.device == "cpu"
    check(a)
    for r in run(a):
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
