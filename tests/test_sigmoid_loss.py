"""Tests for the fused sigmoid (SigLIP) loss: `pytest tests/test_sigmoid_loss.py` (~1-2 min on 2 CPU cores).

Triton runs through the CPU interpreter (fp32, fp16, bf16) and is checked, like the reference, against the
float64 materialized loss: value and all four gradients within 2x the eager error at the same precision.
Also: finiteness at extreme scale/bias, validation errors, torch.compile(fullgraph) (the AOT build of every
launcher config is in tests/test_aot.py), transformers parity, and the gloo ring: 2 and 4 processes with the
reference blocks, 2 with the Triton blocks (tests/test_ring_unequal.py adds unequal local batches).
"""

import os
import socket

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close_to_oracle, max_err

from siglip2.kernels import reference

# private: the kernels' own rule for when Triton runs on CPU (TRITON_INTERPRET), not part of their API
from siglip2.kernels._utils import interpreting
from siglip2.kernels.loss import DistributedSigmoidLoss, sigmoid_loss

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"  # on a GPU machine the Triton checks run compiled on CUDA tensors

# (n, d) cover every n in {1, 7, 37, 130, 1000} and every d in {8, 64, 768}
SHAPES = [(1, 8), (7, 64), (37, 768), (130, 8), (130, 64), (1000, 64), (1000, 768)]
# (log scale, bias): transformers' init, a typical trained value, the B/16 NaFlex checkpoint, and extremes
SCALE_BIAS = [(0.0, 0.0), (2.3, -1.5), (4.7476, -16.777), (10.0, 0.0), (-1.0, 3.0)]


def _make(n, d, scale, bias, dtype, seed=0, param_shape=(1,), scale_dtype=torch.float32, device=DEV):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    # correlate the pairs so the positives matter (as in a trained model)
    txt = F.normalize(txt + 2 * img, dim=-1)
    s = torch.full(param_shape, scale, dtype=torch.float64)
    b = torch.full(param_shape, bias, dtype=torch.float64)
    lo = [x.to(dt) for x, dt in zip([img, txt, s, b], [dtype, dtype, scale_dtype, scale_dtype])]
    lo = [x.to(device) for x in lo]
    return [x.double() for x in lo], lo  # the oracle sees exactly the rounded inputs


def _loss_and_grads(fn, xs):
    xs = [x.clone().requires_grad_() for x in xs]
    loss = fn(*xs)
    return loss.detach(), [gr.detach() for gr in torch.autograd.grad(loss, xs)]


def _eager_baselines(lo, orders=3):
    """The eager reference at the inputs' precision, in `orders` summation orders of the feature dim (identity,
    then random permutations, undone in the gradients): the exact result is the same, the rounding is not. At
    exp(scale) = e^10 the eager d_image error varies 7x between orders, so one order is too noisy a yardstick."""
    runs = []
    for k in range(orders):
        perm = (
            torch.arange(lo[0].shape[1])
            if k == 0
            else torch.randperm(lo[0].shape[1], generator=torch.Generator().manual_seed(k))
        )
        inv = torch.argsort(perm).to(lo[0].device)
        perm = perm.to(lo[0].device)
        loss, (gi, gt, gs, gb) = _loss_and_grads(reference.sigmoid_loss, [lo[0][:, perm], lo[1][:, perm], *lo[2:]])
        runs.append([loss, gi[:, inv], gt[:, inv], gs, gb])
    return runs


def _check(impl, n, d, scale, bias, dtype, **kw):
    hi, lo = _make(n, d, scale, bias, dtype, **kw)
    oracle, g_oracle = _loss_and_grads(reference.sigmoid_loss, hi)
    runs = _eager_baselines(lo)
    out, g_out = _loss_and_grads(lambda *x: sigmoid_loss(*x, impl=impl), lo)
    assert out.shape == () and out.dtype == runs[0][0].dtype
    # per output, the baseline is the eager order with the largest error against the oracle
    worst = [max((r[j] for r in runs), key=lambda b: max_err(b, o)) for j, o in enumerate([oracle, *g_oracle])]
    for name, a, o, b in zip(
        ("loss", "d_image", "d_text", "d_scale", "d_bias"), [out, *g_out], [oracle, *g_oracle], worst
    ):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        # floor: 2 ulps of the result's magnitude (the eager result can be luckily within half an ulp)
        floor = 2e-6 if dtype == torch.float32 else 1e-4
        atol = 2 * torch.finfo(a.dtype).eps * o.abs().max().item() + floor
        assert_close_to_oracle(f"{impl}-{name}", a, o, b, atol=atol)


@pytest.fixture
def nan_fill(monkeypatch):
    pytest.importorskip("triton")
    # private: the NaN-fill test switch (its environment variable is read once, at import)
    from siglip2.kernels import _utils, sigmoid_loss_triton

    monkeypatch.setattr(_utils, "NAN_FILL", True)  # every launcher output starts as NaN
    return sigmoid_loss_triton


def test_fake_strides_match_real(nan_fill):
    """torch.compile trusts the fake impl's strides: the launcher returns contiguous gradients even for
    transposed (dense, non-contiguous) embeddings, so the fake must not copy the inputs' strides."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    n, d = 8, 16
    args = (torch.randn(d, n).t(), torch.randn(d, n).t(), torch.tensor(1.0), torch.tensor([-1.0]), True, float(n), True)
    op = torch.ops.siglip2.sigmoid_loss_block.default
    real = op(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    for r, f in zip(real, fake):
        assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype)


# bf16 runs on the CPU too: the interpreter upcasts the tl.dot operands (DOT_FP32); same 2x-of-eager rule. It
# skips n 1000 at d 768 (two interpreter minutes; n 1000 at d 64 covers the many-tile case).
_DTYPES = [(torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")]
_CASES = [
    (n, d, dt, f"n{n}-d{d}-{name}")
    for dt, name in _DTYPES
    for n, d in SHAPES
    if not (dt == torch.bfloat16 and (n, d) == (1000, 768))
]


@pytest.mark.parametrize("n,d,dtype", [c[:3] for c in _CASES], ids=[c[3] for c in _CASES])
def test_triton_matches_oracle(nan_fill, n, d, dtype):
    # the interpreter is slow at n = 1000: one pair at d = 768, two (one extreme) at d = 64
    picks = {(1000, 768): [1], (1000, 64): [2, 3]}.get((n, d), range(len(SCALE_BIAS)))
    for i in picks:
        _check("triton", n, d, *SCALE_BIAS[i], dtype, seed=i)


@pytest.mark.parametrize("scale,bias", SCALE_BIAS)
@pytest.mark.parametrize("n,d", [(7, 64), (130, 768)])
def test_reference_matches_oracle(n, d, scale, bias):
    """The reference against the float64 oracle at a fixed bound, not against an eager baseline (which would be
    the reference itself). fp32: error <= 1e-4 x the largest |oracle| value, about 13x the worst error measured
    (7.8e-6 relative, d_text at exp(scale) = e^10, d = 768); any real defect (a sign, a missing term) is O(1)."""
    hi, lo = _make(n, d, scale, bias, torch.float32)
    oracle, g_oracle = _loss_and_grads(reference.sigmoid_loss, hi)
    out, g_out = _loss_and_grads(lambda *x: sigmoid_loss(*x, impl="reference"), lo)
    for name, a, o in zip(("loss", "d_image", "d_text", "d_scale", "d_bias"), [out, *g_out], [oracle, *g_oracle]):
        assert a.dtype == torch.float32 and a.shape == o.shape, name
        bound = 1e-4 * o.abs().max().item() + 1e-7
        assert max_err(a, o) <= bound, f"reference-{name}: error {max_err(a, o):.3e} > {bound:.3e}"


def test_multi_chunk_and_param_shapes(nan_fill, monkeypatch):
    # a G buffer of one 64-row block forces 5 chunks and the fp32 dI accumulation across them
    monkeypatch.setattr(nan_fill, "G_BUFFER_BYTES", 64 * 300 * 4)
    _check("triton", 300, 64, 2.3, -1.5, torch.float32, param_shape=())
    _check("triton", 300, 40, 4.7476, -16.777, torch.float16, param_shape=(), scale_dtype=torch.float16)


@pytest.mark.parametrize("bias", [20.0, -20.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_finite_at_extremes(nan_fill, dtype, bias):
    _, lo = _make(37, 64, 10.0, bias, dtype)
    lo[0] = torch.cat([lo[1][:5], lo[0][5:]])  # some identical pairs: logit = exp(10) + bias
    out, grads = _loss_and_grads(lambda *x: sigmoid_loss(*x, impl="triton"), lo)
    assert torch.isfinite(out) and all(torch.isfinite(gr).all() for gr in grads)
    if dtype == torch.float32:
        _check("triton", 37, 64, 10.0, bias, dtype)


def test_no_grad_path_skips_gradients(nan_fill):
    _, lo = _make(37, 64, 2.3, -1.5, torch.float32)
    with torch.no_grad():
        out = sigmoid_loss(*lo, impl="triton")
    assert out.grad_fn is None
    torch.testing.assert_close(out, reference.sigmoid_loss(*lo), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _ok():
    return _make(5, 8, 1.0, 0.0, torch.float32, device="cpu")[1]


@pytest.mark.parametrize(
    "case,exc,match",
    [
        ("img_1d", ValueError, "image_embeds must have 2 dimensions"),
        ("txt_rows", ValueError, "same \\(n, d\\) shape"),
        ("txt_dtype", TypeError, "text_embeds must have dtype"),
        ("int_dtype", TypeError, "image_embeds must have dtype"),
        ("scale_shape", ValueError, "logit_scale must be a scalar"),
        ("bias_2d", ValueError, "logit_bias must be a scalar"),
        ("scale_device", ValueError, "logit_scale must be on cpu"),
        ("not_tensor", TypeError, "logit_bias must be a torch.Tensor"),
        ("empty", ValueError, "non-empty"),
        ("impl", ValueError, "impl must be one of"),
    ],
)
def test_validation(case, exc, match):
    img, txt, s, b = _ok()
    kw = {}
    if case == "img_1d":
        img = img[0]
    elif case == "txt_rows":
        txt = txt[:4]
    elif case == "txt_dtype":
        txt = txt.double()
    elif case == "int_dtype":
        img, txt = img.long(), txt.long()
    elif case == "scale_shape":
        s = torch.zeros(2)
    elif case == "bias_2d":
        b = torch.zeros(1, 1)
    elif case == "scale_device":
        s = torch.zeros(1, device="meta")
    elif case == "not_tensor":
        b = 0.0
    elif case == "empty":
        img, txt = img[:0], txt[:0]
    elif case == "impl":
        kw["impl"] = "cuda"
    with pytest.raises(exc, match=match):
        sigmoid_loss(img, txt, s, b, **kw)


@pytest.mark.skipif(GPU, reason="CPU-only check")
def test_explicit_triton_never_falls_back(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="impl='triton' needs CUDA"):
        sigmoid_loss(*_ok(), impl="triton")


def test_api_module_imports_without_triton():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import siglip2.kernels.loss as m, torch\n"
        "x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)\n"
        "print(float(m.sigmoid_loss(x, x, torch.zeros(()), torch.zeros(()))))"
    )
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


# ----------------------------------------------------------------------------------------------
# torch.compile, transformers parity
# ----------------------------------------------------------------------------------------------


def test_torch_compile_fullgraph(nan_fill):
    # The Triton path is the siglip2::sigmoid_loss_block custom op, opaque to dynamo, so the interpreter
    # runs inside the compiled graph. aot_eager keeps the test free of a C++ toolchain.
    _, lo = _make(37, 64, 2.3, -1.5, torch.float32)

    def f(img, txt, s, b):
        return sigmoid_loss(img * 1.0, txt, s, b, impl="triton") * 2

    eager, g_eager = _loss_and_grads(f, lo)
    compiled, g_comp = _loss_and_grads(torch.compile(f, fullgraph=True, backend="aot_eager"), lo)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


def test_transformers_parity():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Siglip2Config(
        text_config=dict(
            vocab_size=99,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_patches=16,
            patch_size=2,
        ),
    )
    model = transformers.Siglip2Model(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-1.7)
    B, L, N = 6, 16, 12
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        input_ids=torch.randint(0, 99, (B, L), generator=g),
        pixel_values=torch.randn(B, N, 3 * 2 * 2, generator=g),
        pixel_attention_mask=torch.ones(B, N, dtype=torch.long),
        spatial_shapes=torch.tensor([[3, 4]] * B),
    )
    out = model(**inputs, return_loss=True)
    for impl in ("reference", "auto"):
        ours = sigmoid_loss(out.image_embeds, out.text_embeds, model.logit_scale, model.logit_bias, impl=impl)
        torch.testing.assert_close(ours, out.loss, rtol=1e-6, atol=1e-6)
        assert ours.shape == out.loss.shape and ours.dtype == out.loss.dtype


# ----------------------------------------------------------------------------------------------
# torch.distributed ring (gloo, CPU)
# ----------------------------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank, world, port, impl, n_local, d, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        _, lo = _make(world * n_local, d, 2.3, -1.5, torch.float32, seed=world, device="cpu")
        img, txt = (x[rank * n_local : (rank + 1) * n_local].clone().requires_grad_() for x in lo[:2])
        s, b = (x.clone().requires_grad_() for x in lo[2:])
        loss = DistributedSigmoidLoss(impl=impl)(img, txt, s, b)
        loss.backward()
        with torch.no_grad():
            no_grad_loss = DistributedSigmoidLoss(impl=impl)(img, txt, s, b)
        ds, db = s.grad.clone(), b.grad.clone()
        dist.all_reduce(ds)  # each rank holds its share of the scalar gradients
        dist.all_reduce(db)
        results[rank] = (loss.detach(), no_grad_loss, img.grad, txt.grad, ds, db)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world,impl", [(2, "reference"), (4, "reference"), (2, "triton")])
def test_distributed_ring_matches_single_process(world, impl):
    import torch.multiprocessing as mp

    if impl == "triton":
        pytest.importorskip("triton")
        if not interpreting():
            pytest.skip("gloo ranks hold CPU tensors: the Triton blocks need TRITON_INTERPRET=1")
    n_local, d = 5, 24
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_dist_worker, args=(world, _free_port(), impl, n_local, d, results), nprocs=world)
        results = dict(results)
    _, lo = _make(world * n_local, d, 2.3, -1.5, torch.float32, seed=world, device="cpu")
    loss, (d_img, d_txt, d_s, d_b) = _loss_and_grads(reference.sigmoid_loss, lo)
    tol = dict(rtol=1e-6, atol=1e-6)
    for r in range(world):
        r_loss, r_nograd, r_img, r_txt, r_s, r_b = results[r]
        rows = slice(r * n_local, (r + 1) * n_local)
        torch.testing.assert_close(r_loss, loss, **tol)
        torch.testing.assert_close(r_nograd, loss, **tol)
        torch.testing.assert_close(r_img, d_img[rows], **tol)
        torch.testing.assert_close(r_txt, d_txt[rows], **tol)
        torch.testing.assert_close(r_s, d_s, **tol)
        torch.testing.assert_close(r_b, d_b, **tol)


# ----------------------------------------------------------------------------------------------
# GPU (real sizes)
# ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("n,d", [(4096, 768), (5000, 1152), (1000, 72)])
def test_gpu_matches_oracle(n, d, dtype):
    hi, lo = _make(n, d, 4.7476, -16.777, dtype, scale_dtype=dtype)
    hi, lo = [x.cuda() for x in hi], [x.cuda() for x in lo]
    oracle, g_oracle = _loss_and_grads(reference.sigmoid_loss, hi)
    base, g_base = _loss_and_grads(reference.sigmoid_loss, lo)
    out, g_out = _loss_and_grads(lambda *x: sigmoid_loss(*x, impl="triton"), lo)
    for name, a, o, b in zip(
        ("loss", "d_image", "d_text", "d_scale", "d_bias"), [out, *g_out], [oracle, *g_oracle], [base, *g_base]
    ):
        assert_close_to_oracle(name, a, o, b, atol=1e-6)


@pytest.mark.gpu
def test_gpu_multi_chunk_and_graph_capture(monkeypatch):
    from siglip2.kernels import sigmoid_loss_triton as K

    monkeypatch.setattr(K, "G_BUFFER_BYTES", 1024 * 3000 * 2)  # 3 chunks
    _hi, lo = _make(3000, 768, 2.3, -1.5, torch.bfloat16)
    lo = [x.cuda() for x in lo]
    ref_loss, ref_grads = _loss_and_grads(lambda *x: sigmoid_loss(*x, impl="triton"), lo)
    xs = [x.clone().requires_grad_() for x in lo]
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # warm up (compiles the kernel) off the capture
        sigmoid_loss(*xs, impl="triton").backward()
    torch.cuda.synchronize()
    for x in xs:
        x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = sigmoid_loss(*xs, impl="triton")
        loss.backward()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(loss, ref_loss)
    for x, r in zip(xs, ref_grads):
        torch.testing.assert_close(x.grad, r)
