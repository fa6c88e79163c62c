"""Tests for siglip2.kernels.varlen_attention / padded_attention (kernels/attention.py, attention_triton.py).

Run: `pytest tests/test_attention.py --durations=10` (CPU: Triton interpreter, ~5 min on 2 cores; GPU tests skip
without CUDA).
Every kernel result is compared with a float64 per-sequence loop (the oracle): its error may be at most 2x the
error of the eager reference run at the same precision (tests/numerics.py). Kernel outputs are NaN-prefilled
(kernels._utils.NAN_FILL), so an element no program writes fails the test. bf16 runs on CPU too: the kernels
take their dots in fp32 (DOT_FP32) and round their fp32 -> bf16 casts on the bits (`_cast`) when interpreting,
because the 3.9 interpreter's bf16 dot multiplies raw bit patterns and its bf16 cast truncates.
"""

import subprocess
import sys

import pytest
import torch
from numerics import assert_close_to_oracle, max_err

from siglip2.kernels import attention as A
from siglip2.kernels import reference as R

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"

try:
    import triton
    import triton.language as tl

    # private: the interpreter's bf16 rounding helper, tested on its own inside a kernel of this test
    from siglip2.kernels.attention_triton import _cast

    @triton.jit
    def _cast_kernel(x, y, N: tl.constexpr):
        o = tl.arange(0, N)
        tl.store(y + o, _cast(tl.load(x + o), tl.bfloat16, True))
except ImportError:  # the validation tests run without triton
    _cast_kernel = None


@pytest.fixture(autouse=True)
def _nan_fill(monkeypatch):
    # private: the NaN-fill test switch (its environment variable is read once, at import)
    from siglip2.kernels import _utils

    monkeypatch.setattr(_utils, "NAN_FILL", True)


def _assert(name, out, oracle, baseline, atol=1e-6, impl="triton"):
    """The 2x-eager rule. fp32 gets a floor of 8 ulps of the largest oracle value: the backward recomputes P as
    exp2(s * scale * log2 e - lse) from the saved LSE (FlashAttention's recomputation), which costs a few fp32
    ulps that the eager reference, holding P, does not pay; fp16/bf16 rounding dwarfs this.

    impl="reference": the eager baseline is the reference's own numerics, so the 2x rule would compare it with
    itself. It meets a fixed bound against the float64 oracle instead: 32 eps x the largest |oracle| value (the
    worst measured over the varlen cases, fp32 and fp16, D 40/64/72, two seeds: 6.6 eps); real defects are O(1)."""
    if impl == "reference":
        bound = 32 * torch.finfo(out.dtype).eps * (oracle.abs().max().item() if oracle.numel() else 0.0)
        assert torch.isfinite(out).all(), f"reference {name}: non-finite values"
        assert max_err(out, oracle) <= bound, f"reference {name}: error {max_err(out, oracle):.3e} > {bound:.3e}"
        return
    if out.dtype == torch.float32 and oracle.numel():
        atol = max(atol, 8 * torch.finfo(torch.float32).eps * oracle.abs().max().item())
    assert_close_to_oracle(name, out, oracle, baseline, atol=atol)


def _cu(lens, device=DEV):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)


def _rand(*shape, dtype, device=DEV):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_()


def _per_sequence(q, k, v, do, lens_q, lens_k, scale, dtype):
    """Output and (dq, dk, dv) from reference._attend run one sequence at a time in `dtype`."""
    q, k, v, do = (t.detach().to(dtype) for t in (q, k, v, do))
    out, grads = torch.zeros_like(q), [torch.zeros_like(t) for t in (q, k, v)]
    q0 = k0 = 0
    for lq, lk in zip(lens_q, lens_k):
        sq, sk = slice(q0, q0 + lq), slice(k0, k0 + lk)
        q0, k0 = q0 + lq, k0 + lk
        if lq == 0 or lk == 0:
            continue  # outputs of queries without keys stay 0, and nothing flows back
        qi, ki, vi = (t[s].transpose(0, 1).clone().requires_grad_() for t, s in ((q, sq), (k, sk), (v, sk)))
        oi = R._attend(qi, ki, vi, scale)  # private: the reference's one-sequence attention, the oracle per sequence
        gi = torch.autograd.grad(oi, (qi, ki, vi), do[sq].transpose(0, 1))
        out[sq] = oi.detach().transpose(0, 1)
        for g, gs, s in zip(grads, gi, (sq, sk, sk)):
            g[s] = gs.transpose(0, 1)
    return out, grads


def _check_varlen(lens_q, lens_k, H, D, dtype, impl, q=None, k=None, v=None):
    q = _rand(sum(lens_q), H, D, dtype=dtype) if q is None else q
    k = _rand(sum(lens_k), H, D, dtype=dtype) if k is None else k
    v = _rand(sum(lens_k), H, D, dtype=dtype) if v is None else v
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    out = A.varlen_attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), impl=impl)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    scale = D**-0.5
    ref_out, ref_grads = _per_sequence(q, k, v, do, lens_q, lens_k, scale, torch.float64)
    base_out, base_grads = _per_sequence(q, k, v, do, lens_q, lens_k, scale, dtype)
    _assert("out", out, ref_out, base_out, impl=impl)
    for name, g, r, b in zip(("dq", "dk", "dv"), grads, ref_grads, base_grads):
        _assert(name, g, r, b, impl=impl)


LENGTH_CASES = {
    "mixed": ([1, 17, 64, 100], None),
    "equal": ([48, 48, 48], None),
    "zero_len": ([17, 0, 33, 0], None),
    "one_query": (None, [1, 37, 64, 100]),  # pooling head: one probe per image
}


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("D", [40, 64, 72])
@pytest.mark.parametrize("case", list(LENGTH_CASES))
def test_varlen_matches_oracle(case, D, dtype, impl):
    lens_q, lens_k = LENGTH_CASES[case]
    lens_q = lens_q or [1] * len(lens_k)
    _check_varlen(lens_q, lens_k or lens_q, 2, D, dtype, impl)


@pytest.mark.parametrize("D", [96, 128, 16])
def test_varlen_other_head_dims(D):
    _check_varlen([5, 70, 33], [5, 70, 33], 1, D, torch.float16, "triton")


def test_varlen_cross_lengths():
    """Query and key lengths differ per sequence, with a sequence that has queries but no keys."""
    _check_varlen([3, 5, 20, 0, 9], [10, 0, 33, 7, 1], 2, 64, torch.float16, "triton")


def test_varlen_strided_inputs():
    """q, k, v sliced out of one packed qkv projection (row stride 3*H*D) need no copy and stay correct."""
    lens, H, D = [7, 50, 21], 2, 72
    qkv = torch.randn(sum(lens), 3, H, D, device=DEV).requires_grad_()
    q, k, v = qkv.unbind(1)
    _check_varlen(lens, lens, H, D, torch.float32, "triton", q, k, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_varlen_unaligned_strides(dtype):
    """The launcher tells the kernels (ALIGN) that strides are 16-byte multiples only when they are: q, k, v cut
    from a (total, H, 73) buffer (strides 73 H, 73) take the unhinted kernels, contiguous ones the hinted."""
    # private: the launcher's alignment rule, which this test checks against the strides it is given
    from siglip2.kernels.attention_triton import _stride_align

    lens, H, D = [7, 50, 21], 2, 72
    buf = [torch.randn(sum(lens), H, D + 1, dtype=dtype, device=DEV) for _ in range(3)]
    q, k, v = (b[..., :D].requires_grad_() for b in buf)
    assert _stride_align(q, k, v) == 1
    assert _stride_align(*(t.contiguous() for t in (q, k, v))) == 16 // q.element_size()
    _check_varlen(lens, lens, H, D, dtype, "triton", q, k, v)


def test_varlen_noncontiguous_cu_seqlens():
    """cu_seqlens may be a strided view: the kernels index it with unit stride, so the launcher must copy it.
    The view below reads as [0, 0, 7, 7, ...] without the copy: valid bounds, wrong sequences."""
    lens, H, D = [7, 20, 5], 2, 16
    q, k, v = (_rand(sum(lens), H, D, dtype=torch.float32) for _ in range(3))
    cu = _cu(lens)
    cu_view = torch.stack([cu, cu], 1)[:, 0]
    assert not cu_view.is_contiguous()
    outs = []
    for c in (cu, cu_view):
        out = A.varlen_attention(q, k, v, c, c, max(lens), max(lens), impl="triton")
        outs.append((out, *torch.autograd.grad(out, (q, k, v), torch.ones_like(out))))
    for name, a, b in zip(("out", "dq", "dk", "dv"), *outs):
        assert torch.equal(a, b), name


def test_fake_strides_match_real():
    """torch.compile trusts the fake impls' strides (Inductor asserts them): a q/k/v whose last dim is not
    unit-stride is copied by the launcher, so the fake outputs must be contiguous like the real ones."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from siglip2.kernels import attention_triton  # noqa: F401  (registers the ops)

    B, H, L, D = 1, 2, 5, 16
    q, k, v = (torch.randn(B, H, D, L, device=DEV).transpose(-1, -2) for _ in range(3))
    fwd, bwd = torch.ops.siglip2.attention_fwd.default, torch.ops.siglip2.attention_bwd.default
    o, lse = fwd(q, k, v, None, None, None, L, L, 0.25)
    cases = [
        (fwd, (q, k, v, None, None, None, L, L, 0.25), (o, lse)),
        (bwd, (torch.randn_like(o), q, k, v, o, lse, None, None, None, L, L, 0.25), None),
    ]
    for op, args, real in cases:
        real = real if real is not None else op(*args)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
        for r, f in zip(real, fake):
            assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype), op


def _check_padded(B, H, Lq, Lk, D, dtype, mask, impl):
    q, k, v = _rand(B, H, Lq, D, dtype=dtype), _rand(B, H, Lk, D, dtype=dtype), _rand(B, H, Lk, D, dtype=dtype)
    out = A.padded_attention(q, k, v, mask, impl=impl)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    results = []
    for prec in (torch.float64, dtype):
        qq, kk, vv = (t.detach().to(prec).requires_grad_() for t in (q, k, v))
        o = R.padded_attention(qq, kk, vv, mask, D**-0.5)
        results.append((o, torch.autograd.grad(o, (qq, kk, vv), do.to(prec))))
    (ref_out, ref_grads), (base_out, base_grads) = results
    _assert("out", out, ref_out, base_out, impl=impl)
    for name, g, r, b in zip(("dq", "dk", "dv"), grads, ref_grads, base_grads):
        _assert(name, g, r, b, impl=impl)
    return out


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("D", [64, 72])
def test_padded_general_mask(D, dtype, impl):
    """A non-prefix key mask, with one batch row fully masked (its queries must get zeros, not NaN)."""
    B, Lk = 3, 70
    mask = torch.rand(B, Lk, device=DEV) > 0.4
    mask[1] = False
    out = _check_padded(B, 2, 37, Lk, D, dtype, mask, impl)
    assert (out[1] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_padded_no_mask(dtype):
    _check_padded(2, 2, 65, 33, 40, dtype, None, "triton")


def test_padded_equals_varlen():
    """The padded entry with a prefix mask gives the varlen result on the valid rows (outputs and gradients)."""
    lens, H, D, L = [9, 64, 30], 2, 72, 64 + 3
    mask = torch.arange(L, device=DEV)[None, :] < torch.tensor(lens, device=DEV)[:, None]
    x = torch.randn(3, len(lens), L, H, D, device=DEV)  # (q/k/v, B, L, H, D): model layout
    xp = x.clone().requires_grad_()
    q, k, v = (t.transpose(1, 2) for t in xp.unbind(0))  # (B, H, L, D) views, non-contiguous
    out_p = A.padded_attention(q, k, v, mask, impl="triton")
    do = torch.randn_like(out_p) * mask[:, None, :, None]  # padded query rows exist only in the padded layout
    (out_p * do).sum().backward()
    xv = x[:, mask].clone().requires_grad_()  # (3, total, H, D)
    cu = _cu(lens)
    out_v = A.varlen_attention(*xv.unbind(0), cu, cu, max(lens), max(lens), impl="triton")
    (out_v * do.transpose(1, 2)[mask]).sum().backward()
    torch.testing.assert_close(out_p.transpose(1, 2)[mask], out_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xp.grad[:, mask], xv.grad, rtol=1e-5, atol=1e-6)
    assert (xp.grad[1:, ~mask] == 0).all()  # masked keys receive no gradient


@pytest.mark.parametrize("D", [64, 72])
def test_bf16_varlen_matches_oracle(D):
    """bf16 through the kernels on CPU too: the interpreter's fp32 -> bf16 cast truncates, so the kernels round
    to nearest even on the fp32 bits first when interpreting (attention_triton._cast); a truncating cast of P, dS
    or the output would miss the 2x-eager rule. Lengths cover full and partial key blocks (the sm_80 tiles are
    64 keys wide in the forward, 32 in dQ, 32 queries in dK/dV)."""
    _check_varlen([1, 64, 100, 0, 37], [1, 64, 100, 0, 37], 2, D, torch.bfloat16, "triton")


def test_bf16_padded_mask_matches_oracle():
    mask = torch.rand(2, 70, device=DEV) > 0.3
    mask[1, 40:] = False
    _check_padded(2, 2, 33, 70, 72, torch.bfloat16, mask, "triton")


def test_bf16_interpreter_cast_rounds():
    """The kernels' bf16 cast rounds to nearest even under the interpreter (as torch and the GPU do)."""
    x = torch.randn(1024, device=DEV) * 10
    x[:4] = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, float("inf"), -float("inf")])  # ties to even, inf
    y = torch.empty(1024, dtype=torch.bfloat16, device=DEV)
    _cast_kernel[(1,)](x, y, N=1024)
    assert torch.equal(y, x.to(torch.bfloat16))


@pytest.mark.parametrize("scale", [-0.3, 0.0])
def test_varlen_negative_and_zero_scale(scale):
    """The full-block path takes the scaled row max from the unscaled one (its min for a negative scale)."""
    lens = [5, 64, 70]
    q, k, v = (torch.randn(sum(lens), 2, 64, device=DEV) for _ in range(3))
    cu = _cu(lens)
    out = A.varlen_attention(q, k, v, cu, cu, 70, 70, softmax_scale=scale, impl="triton")
    ref = R.varlen_attention(q.double(), k.double(), v.double(), cu, cu, 70, 70, scale)
    _assert("out", out, ref, R.varlen_attention(q, k, v, cu, cu, 70, 70, scale))


def test_no_grad_path_matches():
    lens = [5, 40]
    q, k, v = (torch.randn(45, 2, 64, device=DEV) for _ in range(3))
    cu = _cu(lens)
    with torch.no_grad():
        out = A.varlen_attention(q, k, v, cu, cu, 40, 40, impl="triton")
    ref = R.varlen_attention(q.double(), k.double(), v.double(), cu, cu, 40, 40, 64**-0.5)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


def test_torch_compile_fullgraph():
    """torch.compile(fullgraph=True) traces through the siglip2::attention_fwd/_bwd custom ops (impl='triton',
    under the interpreter on CPU) and gives the eager results for the output and every gradient."""
    lens = [3, 17, 9]
    cu = _cu(lens)
    q, k, v = (torch.randn(29, 2, 64, device=DEV, requires_grad=True) for _ in range(3))
    mask = torch.rand(3, 17, device=DEV) > 0.3

    def f(q, k, v):
        o1 = A.varlen_attention(q, k, v, cu, cu, 17, 17, impl="triton")
        qp, kp, vp = (t[:17].reshape(1, 17, 2, 64).transpose(1, 2).expand(3, -1, -1, -1) for t in (q, k, v))
        o2 = A.padded_attention(qp, kp, vp, mask, impl="triton")
        return o1.square().sum() + o2.square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    grads_c = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    grads_e = torch.autograd.grad(f(q, k, v), (q, k, v))
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge)


def test_api_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\nfrom siglip2.kernels import attention as A\n"
        "cu = torch.tensor([0, 2, 5], dtype=torch.int32); x = torch.randn(5, 1, 8)\n"
        "assert A.varlen_attention(x, x, x, cu, cu, 3, 3).shape == x.shape\n"
        "assert 'siglip2.kernels.attention_triton' not in sys.modules\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ----------------------------------------------------------------------------------------------
# Validation: every bad input raises an error that names the argument
# ----------------------------------------------------------------------------------------------


def _good():
    q = torch.randn(10, 2, 16)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    return dict(q=q, k=q.clone(), v=q.clone(), cu_seqlens_q=cu, cu_seqlens_k=cu.clone(), max_seqlen_q=6, max_seqlen_k=6)


VARLEN_BAD = [
    ("q", lambda a: a.update(q=a["q"][None]), ValueError, "q must have 3 dimensions"),
    ("q", lambda a: a.update(q=a["q"].long()), TypeError, "q must have dtype"),
    ("k", lambda a: a.update(k=a["k"].half()), TypeError, "k must have dtype"),
    ("k", lambda a: a.update(k=a["k"].to("meta")), ValueError, "k must be on cpu"),
    ("v", lambda a: a.update(v=a["v"][:9]), ValueError, "k and v must have the same shape"),
    ("heads", lambda a: a.update(k=a["k"][:, :1], v=a["v"][:, :1]), ValueError, "same number of heads"),
    ("head dim", lambda a: a.update(k=a["k"][..., :8], v=a["v"][..., :8]), ValueError, "same head dim"),
    ("cu dtype", lambda a: a.update(cu_seqlens_q=a["cu_seqlens_q"].long()), TypeError, "cu_seqlens_q must have dtype"),
    ("cu ndim", lambda a: a.update(cu_seqlens_k=a["cu_seqlens_k"][None]), ValueError, "cu_seqlens_k must have 1"),
    (
        "cu len",
        lambda a: a.update(cu_seqlens_k=torch.tensor([0, 2, 8, 10], dtype=torch.int32)),
        ValueError,
        "the same length",
    ),
    (
        "cu start",
        lambda a: a.update(cu_seqlens_q=torch.tensor([1, 4, 10], dtype=torch.int32)),
        ValueError,
        "cu_seqlens_q must start at 0",
    ),
    (
        "cu end",
        lambda a: a.update(cu_seqlens_k=torch.tensor([0, 4, 9], dtype=torch.int32)),
        ValueError,
        "cu_seqlens_k must end at the number of packed tokens (10)",
    ),
    (
        "cu order",
        lambda a: a.update(cu_seqlens_q=torch.tensor([0, 11, 10], dtype=torch.int32)),
        ValueError,
        "non-decreasing",
    ),
    ("max q", lambda a: a.update(max_seqlen_q=5), ValueError, "max_seqlen_q must be >= the longest sequence"),
    ("max k type", lambda a: a.update(max_seqlen_k=6.0), ValueError, "max_seqlen_k must be a non-negative int"),
    ("scale", lambda a: a.update(softmax_scale=float("nan")), ValueError, "softmax_scale must be"),
    ("impl", lambda a: a.update(impl="cuda"), ValueError, "impl must be one of"),
]


@pytest.mark.parametrize("what,mutate,exc,msg", VARLEN_BAD, ids=[b[0] for b in VARLEN_BAD])
def test_varlen_validation(what, mutate, exc, msg):
    args = _good()
    mutate(args)
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        A.varlen_attention(**args)


def test_varlen_cached_check_sees_inplace_change():
    args = _good()
    A.varlen_attention(**args)
    args["cu_seqlens_q"][1] = 7  # in place: the version counter changes, so the cached check is redone
    with pytest.raises(ValueError, match="max_seqlen_q must be >="):
        A.varlen_attention(**args)


PADDED_BAD = [
    ("q ndim", dict(q=torch.randn(4, 8, 16)), ValueError, "q must have 4 dimensions"),
    ("batch", dict(k=torch.randn(3, 2, 7, 16), v=torch.randn(3, 2, 7, 16)), ValueError, "same batch size"),
    ("mask dtype", dict(key_padding_mask=torch.ones(2, 7)), TypeError, "key_padding_mask must have dtype"),
    (
        "mask shape",
        dict(key_padding_mask=torch.ones(2, 5, dtype=torch.bool)),
        ValueError,
        r"key_padding_mask must have shape \(B, Lk\)",
    ),
    ("scale", dict(softmax_scale="0.1"), ValueError, "softmax_scale must be"),
]


@pytest.mark.parametrize("what,override,exc,msg", PADDED_BAD, ids=[b[0] for b in PADDED_BAD])
def test_padded_validation(what, override, exc, msg):
    args = dict(q=torch.randn(2, 2, 5, 16), k=torch.randn(2, 2, 7, 16), v=torch.randn(2, 2, 7, 16))
    args.update(override)
    with pytest.raises(exc, match=msg):
        A.padded_attention(**args)


def test_triton_limits(monkeypatch):
    x = torch.randn(2, 1, 3, 136)
    with pytest.raises(ValueError, match="does not support head dims above 128"):
        A.padded_attention(x, x, x, impl="triton")
    torch.testing.assert_close(A.padded_attention(x, x, x), A.padded_attention(x, x, x, impl="reference"))
    x64 = torch.randn(5, 2, 16, dtype=torch.float64)  # float64: auto uses the reference, triton refuses
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    assert A.varlen_attention(x64, x64, x64, cu, cu, 3, 3).dtype == torch.float64
    with pytest.raises(ValueError, match="does not support float64 inputs"):
        A.varlen_attention(x64, x64, x64, cu, cu, 3, 3, impl="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not GPU:  # an explicit impl='triton' on CPU without the interpreter raises, never falls back
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            A.padded_attention(x[..., :16], x[..., :16], x[..., :16], impl="triton")


# ----------------------------------------------------------------------------------------------
# GPU: real sizes, bf16/fp16 against fp32
# ----------------------------------------------------------------------------------------------


def _gpu_varlen(lens_q, lens_k, H, D, dtype):
    q = _rand(sum(lens_q), H, D, dtype=dtype)
    k, v = _rand(sum(lens_k), H, D, dtype=dtype), _rand(sum(lens_k), H, D, dtype=dtype)
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    out = A.varlen_attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k))
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_out, ref_grads = _per_sequence(q, k, v, do, lens_q, lens_k, D**-0.5, torch.float32)
    base_out, base_grads = _per_sequence(q, k, v, do, lens_q, lens_k, D**-0.5, dtype)
    _assert("out", out, ref_out, base_out, atol=1e-3)
    for name, g, r, b in zip(("dq", "dk", "dv"), grads, ref_grads, base_grads):
        _assert(name, g, r, b, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", [64, 72, 128])
@pytest.mark.parametrize("B,max_len", [(256, 1024), (16, 4096)])
def test_gpu_varlen_real_sizes(B, max_len, D, dtype):
    g = torch.Generator().manual_seed(B + max_len + D)
    lens = torch.randint(max_len // 4, max_len + 1, (B,), generator=g).tolist()
    lens[0] = max_len
    _gpu_varlen(lens, lens, 16, D, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_pooling_head(dtype):
    lens = torch.randint(200, 1025, (256,)).tolist()
    _gpu_varlen([1] * 256, lens, 16, 72, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_gpu_padded_text(dtype):
    mask = torch.arange(64, device=DEV)[None, :] < torch.randint(1, 65, (256, 1), device=DEV)
    _check_padded(256, 16, 64, 64, 72, dtype, mask, "triton")


@pytest.mark.gpu
def test_gpu_fp32_and_odd():
    _check_varlen([1, 17, 300, 0, 129], [1, 17, 300, 0, 129], 4, 96, torch.float32, "triton")
    _check_varlen([1, 17, 300, 0, 129], [1, 17, 300, 0, 129], 4, 40, torch.bfloat16, "triton")
