"""Benchmark: varlen attention on NaFlex batches (siglip2.kernels.varlen_attention) against the alternatives.

FLOP model (FlashAttention convention, useful work only): forward 4 * sum_i(s_i^2) * H * D, backward 2.5x that,
forward+backward 3.5x. Every provider is credited with the same useful FLOPs, so padded providers pay for
their padding in TFLOP/s. pct_peak is against bench.common.peak_for(env, "bf16_tflops").
Batches: images of a realistic aspect-ratio mix resized NaFlex-style to at most max_num_patches patches
(256/576/1024/4096), H = 16, head dims 64 and 72. Providers (same inputs, same run):
  triton          varlen_attention (packed, cu_seqlens)
  triton_pad      the same kernels with the head dim padded to one power-of-two tile (only for D = 72)
  sdpa_mask       F.scaled_dot_product_attention on the padded batch with an additive float key mask (transformers)
  sdpa_per_image  SDPA on each image alone, no mask (the dense best case; a Python loop)
  flex            FlexAttention with a document mask on the packed batch (create_block_mask timed as mode "mask")
  torch_varlen    torch.nn.attention.varlen.varlen_attn, where this torch has it
  flash_attn      flash_attn.flash_attn_varlen_func, when installed
The speedup column is against sdpa_mask. Run standalone: `python bench/bench_attention.py [--cpu] [--quick]`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import itertools

from bench.common import bench_ms, environment, peak_for, peak_mem_mb, speedup

ASPECTS = [1.0, 4 / 3, 3 / 4, 16 / 9, 9 / 16, 3 / 2, 2 / 3, 2.0, 1 / 2, 3.0]  # height / width


def naflex_lengths(batch: int, max_patches: int, seed: int = 0) -> list[int]:
    """Patch counts h*w of images with mixed aspect ratios resized to fit max_patches (as the NaFlex processor)."""
    g = torch.Generator().manual_seed(seed)
    lens = []
    for i in torch.randint(len(ASPECTS), (batch,), generator=g).tolist():
        r = ASPECTS[i]
        h = max(1, int(math.sqrt(max_patches * r)))
        w = max(1, min(max_patches // h, int(h / r + 0.5)))
        lens.append(h * w)
    return lens


def _cases(quick: bool):
    if quick:
        return [(4, n, 64) for n in (32, 64, 128, 256)]  # 4 lengths: a trend, in a few seconds on CPU
    return [(b, n, d) for n, b in ((256, 256), (576, 256), (1024, 128), (4096, 32)) for d in (64, 72)]


def _providers(device):
    provs = ["triton", "triton_pad", "sdpa_mask", "sdpa_per_image", "flex"]
    try:
        from torch.nn.attention import varlen  # noqa: F401

        provs.append("torch_varlen")
    except Exception:
        pass
    try:
        import flash_attn  # noqa: F401

        provs.append("flash_attn")
    except Exception:
        pass
    return provs


def _make_fn(provider, q, k, v, cu, lens, max_len, pad_len, H, D):
    """A callable returning the (packed) output for `provider`, plus the setup time in ms where it has one."""
    from siglip2.kernels import attention_triton as T
    from siglip2.kernels.attention import varlen_attention

    B = len(lens)
    if provider == "triton":
        return lambda: varlen_attention(q, k, v, cu, cu, max_len, max_len, impl="triton"), None
    if provider == "triton_pad":
        scale = D**-0.5

        class _Pad(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v):
                o, lse = T.attention_fwd(q, k, v, cu, cu, None, max_len, max_len, scale, head_dim_mode="pad")
                ctx.save_for_backward(q, k, v, o, lse)
                return o

            @staticmethod
            def backward(ctx, do):
                return T.attention_bwd(
                    do, *ctx.saved_tensors, cu, cu, None, max_len, max_len, scale, head_dim_mode="pad"
                )

        return lambda: _Pad.apply(q, k, v), None
    valid = torch.arange(pad_len, device=q.device)[None, :] < torch.tensor(lens, device=q.device)[:, None]
    if provider == "sdpa_mask":
        bias = torch.zeros(B, 1, pad_len, pad_len, dtype=q.dtype, device=q.device)
        bias.masked_fill_(~valid[:, None, None, :], torch.finfo(q.dtype).min)

        def pad(t):  # (total, H, D) -> (B, H, pad_len, D), differentiable
            out = t.new_zeros(B, pad_len, H, D)
            out = out.masked_scatter(valid[:, :, None, None].expand_as(out), t)
            return out.transpose(1, 2)

        def f():
            o = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=bias)
            return o.transpose(1, 2)[valid]

        return f, None
    if provider == "sdpa_per_image":
        bounds = cu.tolist()

        def f():
            outs = [
                F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1)[None] for t in (q, k, v)))[0].transpose(0, 1)
                for a, b in itertools.pairwise(bounds)
            ]
            return torch.cat(outs)

        return f, None
    if provider == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        doc = torch.repeat_interleave(torch.arange(B, device=q.device), torch.tensor(lens, device=q.device))
        total = doc.numel()
        mask_fn = lambda b, h, qi, ki: doc[qi] == doc[ki]  # noqa: E731
        build = lambda: create_block_mask(mask_fn, None, None, total, total, device=q.device)  # noqa: E731
        block_mask = build()
        mask_ms = bench_ms(build, device=q.device.type)
        flex = torch.compile(flex_attention, dynamic=False)

        def f():
            o = flex(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=block_mask)
            return o[0].transpose(0, 1)

        return f, mask_ms
    if provider == "torch_varlen":
        from torch.nn.attention.varlen import varlen_attn

        return lambda: varlen_attn(q, k, v, cu, cu, max_len, max_len), None
    if provider == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        return lambda: flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len), None
    raise ValueError(provider)


def run(args) -> list[dict]:
    device, dtype = args.device, args.dtype
    env = environment()
    peak = peak_for(env, "bf16_tflops")
    rows = []
    interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    for B, N, D in _cases(args.quick):
        H = 16 if not args.quick else 2
        lens = naflex_lengths(B, N)
        max_len, total = max(lens), sum(lens)
        case = f"N{N}-B{B}-H{H}-D{D}-tok{total}"
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
        fwd_flops = 4 * sum(s * s for s in lens) * H * D
        base = {}
        for provider in _providers(device):
            if provider == "triton_pad" and D & (D - 1) == 0:
                continue
            if provider.startswith("triton") and device == "cpu" and not interp:
                rows.append(
                    dict(
                        op="attention",
                        case=case,
                        provider=provider,
                        mode="fwd",
                        ms=None,
                        note="triton on CPU needs TRITON_INTERPRET=1 (interpreter timings are meaningless)",
                    )
                )
                continue
            # flex: torch.compile on CPU times the compiler; varlen_attn: flash-attention's CUDA kernels only
            cuda_only = {
                "flex": "FlexAttention is benchmarked on CUDA only",
                "torch_varlen": "varlen_attn is CUDA only",
            }
            if provider in cuda_only and device == "cpu":
                rows.append(
                    dict(op="attention", case=case, provider=provider, mode="fwd", ms=None, note=cuda_only[provider])
                )
                continue
            q, k, v = (torch.randn(total, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
            try:
                fn, mask_ms = _make_fn(provider, q, k, v, cu, lens, max_len, max(lens), H, D)
                out = fn()
                do = torch.randn_like(out)
                modes = {
                    # defaults bind this iteration's tensors (each closure is timed before the loop moves on)
                    "fwd": (lambda fn=fn: fn(), 1.0),
                    "bwd": (
                        lambda out=out, q=q, k=k, v=v, do=do: torch.autograd.grad(
                            out, (q, k, v), do, retain_graph=True
                        ),
                        2.5,
                    ),
                    "fwdbwd": (lambda fn=fn, q=q, k=k, v=v, do=do: torch.autograd.grad(fn(), (q, k, v), do), 3.5),
                }
                if mask_ms is not None:
                    rows.append(
                        dict(
                            op="attention",
                            case=case,
                            provider=provider,
                            mode="mask",
                            ms=mask_ms,
                            note="create_block_mask per batch",
                        )
                    )
                for mode, (f, mult) in modes.items():
                    ms = bench_ms(f, device=device)
                    tflops = mult * fwd_flops / (ms * 1e-3) / 1e12
                    if provider == "sdpa_mask":
                        base[mode] = ms
                    rows.append(
                        dict(
                            op="attention",
                            case=case,
                            provider=provider,
                            mode=mode,
                            ms=ms,
                            tflops=tflops,
                            pct_peak=(100 * tflops / peak) if peak else None,
                            peak_mem_mb=peak_mem_mb(f, device=device),
                            speedup=speedup(base[mode], ms) if mode in base else None,
                        )
                    )
                del out, do
            except Exception as e:  # a provider this torch/GPU lacks is reported, not fatal
                rows.append(
                    dict(
                        op="attention",
                        case=case,
                        provider=provider,
                        mode="fwd",
                        ms=None,
                        note=f"failed: {type(e).__name__}: {str(e)[:200]}",
                    )
                )
        for r in rows:  # providers that ran before sdpa_mask get their speedup now
            if r["case"] == case and r.get("ms") and r.get("speedup") is None and r["mode"] in base:
                r["speedup"] = speedup(base[r["mode"]], r["ms"])
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    a = p.parse_args()
    a.device = "cpu" if a.cpu or not torch.cuda.is_available() else "cuda"
    a.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    if a.device == "cpu":
        a.quick, a.dtype = True, (torch.float32 if a.dtype == torch.bfloat16 else a.dtype)
    print(environment())
    for r in run(a):
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
