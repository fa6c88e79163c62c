"""Tests for `naflex_patch_embed` (fused NaFlex patch embedding + antialiased position resize).

Run: `python -m pytest tests/test_patch_embed.py --durations=10` (about a minute on 2 CPU cores: Triton runs
through its interpreter, in fp32, fp16 and bf16; GPU-marked tests, at real sizes, are skipped without CUDA).
Oracle: a float64 re-implementation built directly on `F.interpolate(..., antialias=True)` (the package
reference resizes in fp32 by design, so it cannot be the oracle). The kernel's error against the oracle may be
at most 2x the error of the eager computation at the same precision (`_baseline`: reference.py's numerics).
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from siglip2.kernels.patch_embed import naflex_patch_embed
from tests.numerics import assert_close_to_oracle, max_err

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
NAMES = ("pixel_values", "weight", "bias", "pos_embed")


@pytest.fixture(autouse=True)
def _nan_outputs(monkeypatch):
    # the launchers allocate outputs with NaN, so an element a kernel forgets to write fails the test
    # (private: the test switch; its environment variable is read once, at import)
    from siglip2.kernels import _utils

    monkeypatch.setattr(_utils, "NAN_FILL", True)


def _shapes(G):
    """Every image differs: a 1xN strip, an Nx1 strip, larger than G in one axis and smaller in the other
    (both ways), exactly G x G, and 1 x 1."""
    return [(1, 2 * G + 1), (G + 3, 1), (G + 5, max(G // 2 - 1, 1)), (max(G // 2 - 1, 1), G + 7), (G, G), (1, 1)]


def _make_inputs(G, shapes, L=None, K=12, D=40, dtype=torch.float32, device=DEV, pad=5):
    B = len(shapes)
    L = L or max(h * w for h, w in shapes) + pad
    pixel_values = torch.randn(B, L, K, device=device, dtype=dtype)
    weight = (torch.randn(D, K, device=device) / math.sqrt(K)).to(dtype)
    bias = torch.randn(D, device=device, dtype=dtype)
    pos_embed = torch.randn(G * G, D, device=device, dtype=dtype)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device)
    return pixel_values, spatial_shapes, weight, bias, pos_embed


def _cu(spatial_shapes):
    n = (spatial_shapes[:, 0] * spatial_shapes[:, 1]).to(torch.int32)
    return torch.cat([n.new_zeros(1), n.cumsum(0, dtype=torch.int32)])


def _resize(p, h, w):
    """(G*G, D) -> (h*w, D) with F.interpolate(antialias=True) on the CPU in p's dtype.

    torch's CPU antialias kernel returns the wrong result when the output width is 1 and the height changes
    (see test_torch_cpu_interpolate_width1_bug), so that case resizes the transposed grid to (1, h) instead.
    """
    G = math.isqrt(p.shape[0])
    grid = p.cpu().reshape(G, G, -1).permute(2, 0, 1)[None]  # (1, D, G, G)
    if w == 1 and h != 1:
        r = F.interpolate(
            grid.transpose(2, 3).contiguous(), size=(w, h), mode="bilinear", align_corners=False, antialias=True
        ).transpose(2, 3)
    else:
        r = F.interpolate(grid.contiguous(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return r[0].reshape(p.shape[1], h * w).t().to(p.device)


def oracle(pixel_values, spatial_shapes, weight, bias, pos_embed, cu_seqlens=None, dtype=torch.float64):
    """dtype=float64: the oracle. Otherwise the eager baseline at `dtype`: linear in dtype, resize in fp32, cast,
    add (reference.naflex_patch_embed's numerics, without the CPU width-1 interpolate bug)."""
    x, w, b = (t.to(dtype) for t in (pixel_values, weight, bias))
    p = pos_embed.to(dtype)
    _B, L, _ = x.shape
    out = []
    for i, (h, wd) in enumerate(spatial_shapes.tolist()):
        r = _resize(p if dtype == torch.float64 else p.float(), h, wd).to(dtype)
        rows = torch.cat([r, r[:1].expand(L - h * wd, -1)])
        y = F.linear(x[i], w, b) + rows
        out.append(y[: h * wd] if cu_seqlens is not None else y)
    return torch.cat(out) if cu_seqlens is not None else torch.stack(out)


def _baseline(*args, cu_seqlens=None):
    return oracle(*args, cu_seqlens=cu_seqlens, dtype=args[2].dtype)


def _run(fn, inputs, grad, cu_seqlens=None, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (inputs[0], inputs[2], inputs[3], inputs[4])]
    out = fn(leaves[0], inputs[1], leaves[1], leaves[2], leaves[3], cu_seqlens=cu_seqlens, **kw)
    out.backward(grad.to(out.dtype))
    return out.detach(), [t.grad for t in leaves]


def _check_all(inputs, cu_seqlens=None, impl="triton"):
    """Forward and all four gradients of `impl` against the float64 oracle, 2x the eager reference's error."""
    with torch.no_grad():
        n_out = oracle(*inputs, cu_seqlens=cu_seqlens).shape
    grad = torch.randn(n_out, device=inputs[0].device, dtype=torch.float64)
    ref64, g64 = _run(oracle, [t.double() if t.is_floating_point() else t for t in inputs], grad, cu_seqlens)
    base, gbase = _run(_baseline, inputs, grad, cu_seqlens)
    out, gout = _run(naflex_patch_embed, inputs, grad, cu_seqlens, impl=impl)
    atol = 1e-5 if inputs[2].dtype == torch.float32 else 1e-3
    assert out.dtype == inputs[2].dtype
    if impl == "reference":
        # The eager baseline has the reference's own numerics, so the 2x rule would compare it with itself: the
        # reference gets a fixed bound against the oracle instead, 16 eps x the largest |oracle| value (the worst
        # measured over fp32/fp16/bf16, G 4 and 16, three seeds: 3.4 eps); any real defect is O(1).
        eps = torch.finfo(inputs[2].dtype).eps
        for name, a, o in zip(("out", *(f"d{n}" for n in NAMES)), [out, *gout], [ref64, *g64]):
            bound = 16 * eps * o.abs().max().item()
            assert max_err(a, o) <= bound, f"reference {name}: error {max_err(a, o):.3e} > {bound:.3e}"
        return
    assert_close_to_oracle("out", out, ref64, base, atol=atol)
    for name, a, o, bl in zip(NAMES, gout, g64, gbase):
        assert a.dtype == bl.dtype, name
        assert_close_to_oracle(f"d{name}", a, o, bl, atol=atol * 4)


# ----------------------------------------------------------------------------------------------
# The resize itself
# ----------------------------------------------------------------------------------------------


def _axis_weights(n_in, n_out):
    """upstream-spec §3.1 separable weights, float64."""
    scale = n_in / n_out
    support = scale if scale >= 1 else 1.0
    inv = 1 / scale if scale >= 1 else 1.0
    W = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        c = scale * (i + 0.5)
        lo, hi = max(int(c - support + 0.5), 0), min(int(c + support + 0.5), n_in)
        for j in range(lo, hi):
            W[i, j] = max(0.0, 1 - abs((j - c + 0.5) * inv))
        W[i] /= W[i].sum()
    return W


@pytest.mark.parametrize("G", [4, 16])
def test_separable_weights_equal_interpolate(G):
    P = torch.randn(G, G, 3, dtype=torch.float64)
    for h, w in [*_shapes(G), (2 * G, 3 * G), (G - 1, G + 1)]:
        ref = _resize(P.reshape(G * G, 3), h, w).reshape(h, w, 3)
        sep = torch.einsum("yi,ijd,xj->yxd", _axis_weights(G, h), P, _axis_weights(G, w))
        torch.testing.assert_close(sep, ref, rtol=0, atol=1e-12)


def test_torch_cpu_interpolate_width1_bug():
    """Documents a torch CPU bug (torch 2.13): NCHW-contiguous antialiased bilinear with output width 1 and a
    changed height skips the vertical pass. transformers' Siglip2VisionEmbeddings hits it on CPU for N x 1 grids (very
    tall images); kernels/reference.py works around it and the kernels compute the correct resize."""
    P = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    nchw = F.interpolate(P, size=(7, 1), mode="bilinear", align_corners=False, antialias=True)
    sep = torch.einsum("yi,cij,xj->cyx", _axis_weights(16, 7), P[0], _axis_weights(16, 1))[None]
    if torch.allclose(nchw, sep):
        pytest.xfail("torch fixed the CPU width-1 antialias bug: kernels/reference.py can drop its workaround")
    assert torch.allclose(nchw, nchw[:, :, :1].expand_as(nchw))  # every row equals the first


# ----------------------------------------------------------------------------------------------
# Forward + backward against the oracle (interpreter on CPU)
# ----------------------------------------------------------------------------------------------

DTYPES = dict(argvalues=[torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])


# bf16 runs on the CPU too: the interpreter upcasts the tl.dot operands (DOT_FP32), and the tolerance is the
# same 2x of the eager bf16 baseline's error against the float64 oracle as for every dtype. bf16 at G = 16 runs
# packed (test_packed): one minute of interpreter time less than running it here as well.
@pytest.mark.parametrize(
    "G, dtype",
    [(4, torch.float32), (4, torch.float16), (16, torch.float32), (16, torch.float16), (4, torch.bfloat16)],
    ids=["4-fp32", "4-fp16", "16-fp32", "16-fp16", "4-bf16"],
)
@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_forward_backward(G, dtype, impl):
    _check_all(_make_inputs(G, _shapes(G), dtype=dtype), impl=impl)


def test_odd_sizes_non_pow2_grid():
    # G = 5 (not a power of two), K = 37 and D = 70 (no block multiple), fp32 pixels with fp16 weights
    inputs = list(_make_inputs(5, [(3, 11), (7, 2), (5, 5)], K=37, D=70, dtype=torch.float16, pad=40))
    inputs[0] = inputs[0].float()
    _check_all(inputs)


@pytest.mark.parametrize("dtype", **DTYPES)
def test_packed(dtype):
    inputs = _make_inputs(16, _shapes(16), dtype=dtype)
    cu = _cu(inputs[1])
    padded = naflex_patch_embed(*inputs, impl="triton")
    packed = naflex_patch_embed(*inputs, cu_seqlens=cu, impl="triton")
    n = (inputs[1][:, 0] * inputs[1][:, 1]).tolist()
    valid = torch.cat([padded[i, :k] for i, k in enumerate(n)])
    assert packed.shape == (sum(n), inputs[2].shape[0])
    assert torch.equal(packed, valid)
    _check_all(inputs, cu_seqlens=cu)


def test_no_grad_path_and_partial_grads():
    inputs = _make_inputs(4, [(3, 5), (2, 2)])
    with torch.no_grad():
        out = naflex_patch_embed(*inputs, impl="triton")
    assert not out.requires_grad
    pos = inputs[4].clone().requires_grad_()
    out = naflex_patch_embed(inputs[0], inputs[1], inputs[2], inputs[3], pos, impl="triton")
    out.sum().backward()
    assert pos.grad is not None and torch.isfinite(pos.grad).all()


def test_spatial_shapes_int32_on_cpu():
    inputs = list(_make_inputs(4, [(3, 5), (6, 1)]))
    expect = naflex_patch_embed(*inputs, impl="triton")
    inputs[1] = inputs[1].to(torch.int32).cpu()
    torch.testing.assert_close(naflex_patch_embed(*inputs, impl="triton"), expect, rtol=0, atol=0)


def test_packed_noncontiguous_cu_seqlens():
    """cu_seqlens may be a strided view; the kernels index it with unit stride, so the launchers copy it.
    Without the copy the view below reads as [0, 0, n0, n0, ...]: in-bounds but wrong rows."""
    inputs = list(_make_inputs(4, [(3, 5), (2, 2), (1, 7)]))
    inputs[4] = inputs[4].clone().requires_grad_()
    cu = _cu(inputs[1])
    cu_view = torch.stack([cu, cu], 1)[:, 0]
    assert not cu_view.is_contiguous()
    res = []
    for c in (cu, cu_view):
        out = naflex_patch_embed(*inputs, cu_seqlens=c, impl="triton")
        dout = torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape).sin()
        res.append((out, *torch.autograd.grad(out, inputs[4], dout)))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_backward_fake_strides_match_real():
    """torch.compile trusts the fake impl's strides: dpixel_values is a fresh contiguous tensor even when
    pixel_values is a permuted (dense, non-contiguous) view, so the fake must not copy its strides."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from siglip2.kernels import patch_embed_triton  # noqa: F401  (registers the ops)

    B, L, K, D, G = 2, 6, 16, 32, 4
    args = (
        torch.randn(B, L, D, device=DEV),
        torch.randn(B, K, L, device=DEV).transpose(1, 2),
        torch.tensor([[2, 3], [1, 5]], device=DEV),
        torch.randn(D, K, device=DEV),
        torch.randn(G * G, D, device=DEV),
        None,
        [True, True, True, True],
    )
    op = torch.ops.siglip2.naflex_patch_embed_backward.default
    real = op(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    for r, f in zip(real, fake):
        assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype)


# ----------------------------------------------------------------------------------------------
# Parity with transformers' Siglip2VisionEmbeddings
# ----------------------------------------------------------------------------------------------


def test_matches_transformers_siglip2_vision_embeddings():
    from transformers import Siglip2VisionConfig
    from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

    cfg = Siglip2VisionConfig(hidden_size=48, num_channels=3, patch_size=2, num_patches=16)
    emb = Siglip2VisionEmbeddings(cfg).to(DEV).eval()
    with torch.no_grad():
        for p in emb.parameters():
            p.normal_()
    shapes = [(1, 9), (7, 2), (4, 4), (3, 3), (1, 1)]
    pixel_values = torch.randn(len(shapes), 20, 12, device=DEV)
    spatial_shapes = torch.tensor(shapes, device=DEV)
    with torch.no_grad():
        expect = emb(pixel_values, spatial_shapes)
        got = naflex_patch_embed(
            pixel_values,
            spatial_shapes,
            emb.patch_embedding.weight,
            emb.patch_embedding.bias,
            emb.position_embedding.weight,
            impl="triton",
        )
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Validation: every error names the argument
# ----------------------------------------------------------------------------------------------


def _bad(**override):
    x, s, w, b, p = _make_inputs(4, [(2, 3), (3, 3)], L=10)
    args = dict(pixel_values=x, spatial_shapes=s, weight=w, bias=b, pos_embed=p, cu_seqlens=None, impl="triton")
    args.update(override)
    return args


def _call(args):
    args = dict(args)
    pos = [args.pop(k) for k in ("pixel_values", "spatial_shapes", "weight", "bias", "pos_embed")]
    return naflex_patch_embed(*pos, **args)


@pytest.mark.parametrize(
    "override, exc, match",
    [
        (dict(pixel_values=torch.randn(2, 10)), ValueError, "pixel_values must have 3 dimensions"),
        (dict(pixel_values=torch.randint(0, 3, (2, 10, 12))), TypeError, "pixel_values must have dtype"),
        (dict(weight=torch.randn(40, 13)), ValueError, r"weight must have shape \(D, 12\)"),
        (dict(bias=torch.randn(41)), ValueError, r"bias must have shape \(40,\)"),
        (dict(bias=torch.randn(40, dtype=torch.float16)), TypeError, "bias must have dtype"),
        (dict(pos_embed=torch.randn(15, 40)), ValueError, "pos_embed must have a perfect-square"),
        (dict(pos_embed=torch.randn(16, 41)), ValueError, r"pos_embed must have shape \(G\*G, 40\)"),
        (dict(spatial_shapes=torch.tensor([[2, 3]])), ValueError, r"spatial_shapes must have shape \(2, 2\)"),
        (dict(spatial_shapes=torch.tensor([[2.0, 3.0], [3.0, 3.0]])), TypeError, "spatial_shapes must have dtype"),
        (dict(spatial_shapes=torch.tensor([[0, 3], [3, 3]])), ValueError, r"spatial_shapes\[0\] = \(0, 3\)"),
        (dict(spatial_shapes=torch.tensor([[2, 3], [3, -1]])), ValueError, r"spatial_shapes\[1\] = \(3, -1\)"),
        (dict(spatial_shapes=torch.tensor([[2, 3], [4, 3]])), ValueError, "more than pixel_values' L = 10"),
        (dict(cu_seqlens=torch.tensor([0, 6, 15], dtype=torch.int64)), TypeError, "cu_seqlens must have dtype"),
        (dict(cu_seqlens=torch.tensor([0, 6], dtype=torch.int32)), ValueError, r"cu_seqlens must have shape \(3,\)"),
        (dict(cu_seqlens=torch.tensor([0, 6, 14], dtype=torch.int32)), ValueError, "prefix sums of h\\*w"),
        (dict(impl="cuda"), ValueError, "impl must be one of"),
    ],
)
def test_validation(override, exc, match):
    with pytest.raises(exc, match=match):
        _call(_bad(**override))


def test_explicit_triton_never_falls_back(monkeypatch):
    if HAS_CUDA:
        pytest.skip("CPU-only check")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="impl='triton' needs CUDA"):
        _call(_bad())
    args = _bad(impl="triton")
    for k in ("pixel_values", "weight", "bias", "pos_embed"):
        args[k] = args[k].double()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="does not support float64 parameters"):
        _call(args)


def test_api_module_imports_without_triton():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch; from siglip2.kernels.patch_embed import naflex_patch_embed\n"
        "x = torch.randn(1, 4, 3); s = torch.tensor([[2, 2]])\n"
        "print(naflex_patch_embed(x, s, torch.randn(5, 3), torch.randn(5), torch.randn(4, 5)).shape)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "0"}
    )
    assert r.returncode == 0, r.stderr
    assert "torch.Size([1, 4, 5])" in r.stdout


# ----------------------------------------------------------------------------------------------
# torch.compile through the custom op
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_torch_compile_fullgraph(packed):
    # Uses impl='triton' (the interpreter on CPU) through siglip2::naflex_patch_embed; aot_eager checks the fake
    # impls and the registered autograd without needing a C++ toolchain for inductor.
    torch._dynamo.reset()
    inputs = _make_inputs(4, [(3, 5), (2, 7), (1, 1)])
    cu = _cu(inputs[1]) if packed else None

    def f(x, s, w, b, p):
        return naflex_patch_embed(x, s, w, b, p, cu_seqlens=cu, impl="triton")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (inputs[0], inputs[2], inputs[3], inputs[4])]
    out = compiled(leaves[0], inputs[1], *leaves[1:])
    out.square().sum().backward()
    leaves2 = [t.clone().requires_grad_() for t in (inputs[0], inputs[2], inputs[3], inputs[4])]
    out2 = f(leaves2[0], inputs[1], *leaves2[1:])
    out2.square().sum().backward()
    torch.testing.assert_close(out, out2)
    for a, b in zip(leaves, leaves2):
        torch.testing.assert_close(a.grad, b.grad)


# ----------------------------------------------------------------------------------------------
# GPU tests at real sizes
# ----------------------------------------------------------------------------------------------


def _real_shapes(B, L, G=16):
    g = torch.Generator().manual_seed(B * L)
    shapes = []
    for _ in range(B):
        h = int(torch.randint(1, min(L, 4 * G) + 1, (1,), generator=g))
        w = int(torch.randint(1, max(L // h, 1) + 1, (1,), generator=g))
        shapes.append((h, min(w, L // h)))
    shapes[0] = (L // (2 * G) if L >= 2 * G else 1, min(2 * G, L))
    return shapes


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("K, D", [(588, 1152), (768, 768)])
def test_gpu_real_sizes(dtype, K, D):
    inputs = _make_inputs(16, _real_shapes(8, 1024), L=1024, K=K, D=D, dtype=dtype, device="cuda")
    _check_all(inputs)
    _check_all(inputs, cu_seqlens=_cu(inputs[1]))


@pytest.mark.gpu
def test_gpu_large_batch_bf16():
    inputs = _make_inputs(16, _real_shapes(64, 4096), L=4096, K=768, D=768, dtype=torch.bfloat16, device="cuda")
    _check_all(inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("shapes", [[(1, 37), (13, 21), (16, 16), (1, 1)], [(7, 1), (40, 1)]], ids=["grids", "Nx1"])
def test_gpu_matches_transformers_fp32(shapes):
    # transformers on CUDA resizes with the CUDA F.interpolate kernel; the "Nx1" case shows whether that kernel
    # shares the CPU width-1 bug (if only "Nx1" fails, it does, and the kernel is the correct one).
    from transformers import Siglip2VisionConfig
    from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

    cfg = Siglip2VisionConfig(hidden_size=768, num_channels=3, patch_size=16, num_patches=256)
    emb = Siglip2VisionEmbeddings(cfg).cuda().eval()
    with torch.no_grad():
        for p in emb.parameters():
            p.normal_()
    pixel_values = torch.randn(len(shapes), 300, 768, device="cuda")
    spatial_shapes = torch.tensor(shapes, device="cuda")
    with torch.no_grad():
        expect = emb(pixel_values, spatial_shapes)
        got = naflex_patch_embed(
            pixel_values,
            spatial_shapes,
            emb.patch_embedding.weight,
            emb.patch_embedding.bias,
            emb.position_embedding.weight,
            impl="triton",
        )
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# The position-table adjoint over more images than it has chunks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_pos_adjoint_many_images_uneven_chunks(packed):
    """More images than ADJ_MAX_CHUNKS, so each chunk of the adjoint sums several images, and a batch that is not a
    multiple of the images per chunk, so the last chunk is short: every image's share must reach d pos_embed."""
    from siglip2.kernels import patch_embed_triton as pet

    G = 4
    base = [*_shapes(G), (2, 3), (5, 2), (3, 3)]
    B = 2 * pet.ADJ_MAX_CHUNKS + 6  # 70: 3 images per chunk, 24 chunks, the last one holding 1
    imgs = -(-B // pet.ADJ_MAX_CHUNKS)
    assert imgs > 1 and B % imgs != 0
    shapes = [base[i % len(base)] for i in range(B)]
    inputs = _make_inputs(G, shapes, K=6, D=8)
    _check_all(inputs, cu_seqlens=_cu(inputs[1]) if packed else None)
    # the short last chunk's one image has a share of d pos_embed far above the tolerance: dropping it must fail
    last = [t[-1:] if i in (0, 1) else t for i, t in enumerate(inputs)]
    cu = _cu(last[1]) if packed else None
    with torch.no_grad():
        n_out = oracle(*last, cu_seqlens=cu).shape
    grad = torch.randn(n_out, dtype=torch.float64, device=inputs[0].device)
    _, g_last = _run(oracle, [t.double() if t.is_floating_point() else t for t in last], grad, cu)
    assert g_last[3].abs().max() > 0.1
