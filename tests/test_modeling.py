"""Drop-in parity with transformers on tiny random checkpoints with every parameter perturbed (tests/tiny.py), for
both impls: forward in fp32 within 1e-5, gradients within 2x transformers' own fp32 error, the bf16 loss as accurate
as transformers' (errors against float64 runs of transformers; test_half_precision_loss_matches_transformers says
how a one-number error is compared soundly).

The reference impl must match transformers everywhere, padded rows included. The packed (triton) impl must match on
every valid token and on every pooled/projected output; its padded rows are zeros by design. On CPU the packed impl
runs the kernels through the Triton interpreter (conftest sets TRITON_INTERPRET=1), and every test of it counts the
Triton launches per kernel (NEEDS): a packed path that silently ran an op on its PyTorch reference fails.
"""

import contextlib
import copy
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from launches import count_triton_launches
from numerics import sigmoid_loss_sensitivity
from tiny import hf_model, hf_siglip2, naflex_inputs, text_inputs

import siglip2.fast as fast
import siglip2.reference as ref
from siglip2.models.packing import PackedBatch

ATOL = 1e-5
ATTN, PATCH, LOSS = "_attn_fwd_kernel", "_patch_embed_fwd_kernel", "_sigmoid_loss_fwd_kernel"
ATTN_BWD = ("_attn_bwd_preprocess_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel")
# The Triton launches each test of the triton impl must make, at least: one patch embedding per vision forward, one
# attention per encoder layer of each tower (2 layers each) plus one for the pooling head, one fused loss. A count
# below these means an op (or a whole tower) ran on the PyTorch reference.
DUAL = {PATCH: 1, ATTN: 2 + 1 + 2}
NEEDS = {
    "test_siglip2_model_matches_transformers": dict(DUAL, **{LOSS: 1}),
    "test_fixres_siglip_matches_transformers": dict(DUAL, **{LOSS: 1}),
    "test_hidden_states_and_attentions": DUAL,
    "test_vision_model_without_head": {PATCH: 1, ATTN: 2},
    "test_nx1_strip_is_resized_correctly": {PATCH: 1},
    "test_mask_none_means_every_token_is_valid": {PATCH: 1, ATTN: 3},
    "test_get_features_return_pooled_unnormalized": DUAL,
    "test_image_classification_with_labels": dict(
        {PATCH: 1, ATTN: 2, "_pos_adjoint_kernel": 1}, **{k: 2 for k in ATTN_BWD}
    ),
    "test_backward_matches_transformers": dict(DUAL, **{LOSS: 1, "_pos_adjoint_kernel": 1}, **{k: 5 for k in ATTN_BWD}),
    "test_half_precision_loss_matches_transformers": dict(DUAL, **{LOSS: 1}),
    "test_compile_traces_fast_vision_tower_fullgraph": {PATCH: 1, ATTN: 3},
    "test_fast_model_runs_in_float64": {},  # every op routes float64 to its reference: no launch at all
}


@pytest.fixture(autouse=True)
def _triton_ran(request):
    """A test of the triton impl (impl="triton", or a test in NEEDS without an impl parameter) must have launched
    the Triton kernels NEEDS names, as many times as it says (on CPU, through the interpreter)."""
    impl = getattr(getattr(request.node, "callspec", None), "params", {}).get("impl")
    name = request.node.originalname
    if impl == "reference" or (impl is None and name not in NEEDS):
        yield
        return
    failed = request.session.testsfailed
    with count_triton_launches() as launches:
        yield
    if request.session.testsfailed > failed:
        # the test body already failed (its report is logged before teardown): an assertion that stopped it before
        # the triton model ran would also show up here as missing launches, one failure counted twice
        return
    need = NEEDS.get(name)
    if need is None:  # a triton-impl test not listed in NEEDS: at least some kernel must have run
        assert sum(launches.values()) > 0, "the triton impl ran no Triton kernel"
        return
    if not need:
        assert not launches, f"expected no Triton launch, got {dict(launches)}"
    short = {k: (launches[k], n) for k, n in need.items() if launches[k] < n}
    assert not short, f"Triton launches (got, needed) below the minimum: {short}; all: {dict(launches)}"


# (h, w) grids for a 4x4 position table (num_patches=16), sequence length 24: up- and down-sampling per axis,
# a 1xN strip, exactly the table, and a grid that fills the whole sequence. Nx1 strips are tested on their own:
# transformers on CPU inherits a torch bug there (test_nx1_strip_is_resized_correctly).
SHAPES = [(4, 5), (1, 7), (2, 2), (6, 4), (12, 2), (4, 4), (3, 8)]
CONFIGS = {
    "hd16": dict(),
    "hd18-odd": dict(hidden=72, heads=4),  # head dim not a power of two (So400m has 72)
    "hd20-table9": dict(hidden=60, heads=3, num_patches=9),
}


def _close(a, b, name, mask=None, atol=ATOL):
    a, b = a.detach(), b.detach()
    if mask is not None:
        m = mask.bool()[..., None]
        a, b = a * m, b * m
    err = (a - b).abs().max().item()
    assert err <= atol, f"{name}: max |diff| {err:.3e} > {atol}"


def _run_both(hf, ours, shapes=SHAPES, L=24, text_pad=None, **flags):
    pv, mask, ss = naflex_inputs(shapes, L)
    ids, am = text_inputs(len(shapes), 12, pad_from=text_pad)
    kw = dict(
        input_ids=ids,
        pixel_values=pv,
        pixel_attention_mask=mask,
        spatial_shapes=ss,
        attention_mask=am if text_pad else None,
        **flags,
    )
    with torch.no_grad():
        return hf(**kw), ours(**kw), mask


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_siglip2_model_matches_transformers(name, impl):
    hf = hf_siglip2(**CONFIGS[name])
    ours = (ref if impl == "reference" else fast).Siglip2Model(hf.config)
    ours.load_state_dict(hf.state_dict(), strict=True)
    a, b, mask = _run_both(hf, ours.eval(), return_loss=True, text_pad=[12, 5, 1, 9, 12, 3, 7])
    for k in ("loss", "logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        _close(a[k], b[k], k)
    _close(a.text_model_output.last_hidden_state, b.text_model_output.last_hidden_state, "text last_hidden_state")
    valid = None if impl == "reference" else mask
    _close(a.vision_model_output.last_hidden_state, b.vision_model_output.last_hidden_state, "vision last", valid)
    _close(a.vision_model_output.pooler_output, b.vision_model_output.pooler_output, "vision pooler")


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_vision_model_without_head(impl):
    hf = hf_model("Siglip2VisionModel", use_head=False)
    ours = (ref if impl == "reference" else fast).Siglip2VisionModel(hf.config)
    ours.load_state_dict(hf.state_dict(), strict=True)
    pv, mask, ss = naflex_inputs(SHAPES, 24)
    with torch.no_grad():
        a, b = hf(pv, mask, ss), ours.eval()(pv, mask, ss)
    assert a.pooler_output is None and b.pooler_output is None
    _close(a.last_hidden_state, b.last_hidden_state, "last", None if impl == "reference" else mask)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_nx1_strip_is_resized_correctly(impl):
    """torch 2.13's CPU antialiased bilinear returns row 0 for every row when the output width is 1, and transformers'
    embeddings inherit that on CPU. Ours resize correctly: compare with the separable formula in float64."""
    from test_patch_embed import _axis_weights

    hf = hf_siglip2()
    emb = (ref if impl == "reference" else fast).Siglip2VisionModel(hf.config.vision_config).embeddings
    emb.load_state_dict(hf.vision_model.embeddings.state_dict())
    pv, _mask, ss = naflex_inputs([(12, 1), (3, 8)], 24)
    with torch.no_grad():
        if impl == "reference":
            out = emb(pv, ss)
        else:  # no mask: every token is kept, the packed rows are the padded batch flattened
            out = emb(pv, ss, PackedBatch.from_spatial_shapes(ss, 24, "cpu"), "auto").reshape(2, 24, -1)
    pos = hf.vision_model.embeddings.position_embedding.weight.double().reshape(4, 4, -1)
    want = torch.einsum("yi,xj,ijd->yxd", _axis_weights(4, 12), _axis_weights(4, 1), pos).reshape(12, -1)
    got = out[0, :12].double() - torch.nn.functional.linear(
        pv[0, :12].double(), emb.patch_embedding.weight.double(), emb.patch_embedding.bias.double()
    )
    _close(got, want, "Nx1 position rows")


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_hidden_states_and_attentions(impl):
    hf = hf_siglip2()
    hf.set_attn_implementation("eager")
    ours = (ref if impl == "reference" else fast).Siglip2Model(hf.config)
    ours.load_state_dict(hf.state_dict())
    a, b, mask = _run_both(hf, ours.eval(), output_hidden_states=True, output_attentions=True)
    for tower in ("vision_model_output", "text_model_output"):
        ha, hb = a[tower].hidden_states, b[tower].hidden_states
        assert len(ha) == len(hb) == 3
        for i, (x, y) in enumerate(zip(ha, hb)):
            _close(x, y, f"{tower} hidden_states[{i}]", mask if (impl == "triton" and tower[0] == "v") else None)
    if impl == "reference":
        for x, y in zip(a.vision_model_output.attentions, b.vision_model_output.attentions):
            _close(x, y, "vision attentions")
    else:
        assert b.vision_model_output.attentions == ()  # kernels never materialize weights (as transformers' sdpa)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_mask_none_means_every_token_is_valid(impl):
    hf = hf_siglip2()
    ours = (ref if impl == "reference" else fast).Siglip2VisionModel(hf.config.vision_config)
    ours.load_state_dict(hf.vision_model.state_dict())
    pv, _, ss = naflex_inputs([(4, 5), (3, 3)], 24)
    with torch.no_grad():
        a = hf.vision_model(pixel_values=pv, pixel_attention_mask=None, spatial_shapes=ss)
        b = ours.eval()(pv, None, ss)
    _close(a.last_hidden_state, b.last_hidden_state, "last (no mask)")
    _close(a.pooler_output, b.pooler_output, "pooler (no mask)")


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_image_classification_with_labels(impl):
    hf = hf_model("Siglip2ForImageClassification", num_labels=3)
    ours = (ref if impl == "reference" else fast).Siglip2ForImageClassification(hf.config)
    ours.load_state_dict(hf.state_dict(), strict=True)
    pv, mask, ss = naflex_inputs(SHAPES[:4], 24)
    labels = torch.tensor([0, 2, 1, 2])
    a = hf(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=ss, labels=labels)
    b = ours.eval()(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=ss, labels=labels)
    _close(a.logits, b.logits, "logits")
    _close(a.loss, b.loss, "loss")
    assert ours.config.problem_type == "single_label_classification"
    b.loss.backward()
    assert ours.classifier.weight.grad is not None


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_fixres_siglip_matches_transformers(impl):
    hf = hf_model("SiglipModel", image_size=8)  # a 4x4 grid of 2x2 patches
    ours = (ref if impl == "reference" else fast).SiglipModel(hf.config)
    ours.load_state_dict(hf.state_dict(), strict=True)
    pv = torch.randn(3, 3, 8, 8)
    ids, _ = text_inputs(3, 10)
    with torch.no_grad():
        a = hf(input_ids=ids, pixel_values=pv, return_loss=True)
        b = ours.eval()(input_ids=ids, pixel_values=pv, return_loss=True)
    for k in ("loss", "logits_per_image", "image_embeds", "text_embeds"):
        _close(a[k], b[k], k)
    _close(a.vision_model_output.last_hidden_state, b.vision_model_output.last_hidden_state, "vision last")


def test_get_features_return_pooled_unnormalized():
    hf = hf_siglip2()
    ours = fast.Siglip2Model(hf.config)
    ours.load_state_dict(hf.state_dict())
    pv, mask, ss = naflex_inputs(SHAPES[:3], 24)
    ids, _ = text_inputs(3, 12)
    with torch.no_grad():
        img = ours.get_image_features(pv, mask, ss)
        txt = ours.get_text_features(ids)
        _close(
            img,
            hf.get_image_features(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=ss).pooler_output,
            "image features",
        )
        _close(txt, hf.get_text_features(input_ids=ids).pooler_output, "text features")
    assert not torch.allclose(img.norm(dim=-1), torch.ones(3))


def test_outputs_by_attribute_key_index_and_tuple():
    hf = hf_siglip2()
    ours = ref.Siglip2Model(hf.config)
    ours.load_state_dict(hf.state_dict())
    pv, mask, ss = naflex_inputs(SHAPES[:2], 24)
    ids, _ = text_inputs(2, 12)
    out = ours(input_ids=ids, pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=ss)
    assert out.loss is None and out[0] is out.logits_per_image and out["text_embeds"] is out.text_embeds
    assert len(out.to_tuple()) == 6
    tup = ours(
        input_ids=ids,
        pixel_values=pv,
        pixel_attention_mask=mask,
        spatial_shapes=ss,
        return_loss=True,
        return_dict=False,
    )
    ref_tup = hf(
        input_ids=ids,
        pixel_values=pv,
        pixel_attention_mask=mask,
        spatial_shapes=ss,
        return_loss=True,
        return_dict=False,
    )
    assert isinstance(tup, tuple) and len(tup) == len(ref_tup) == 7
    assert isinstance(tup[5], tuple) and isinstance(tup[6], tuple)
    _close(tup[0], ref_tup[0], "tuple loss")


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_backward_matches_transformers(impl):
    """Every gradient within 2x transformers' own fp32 error against a float64 run of transformers, plus 1e-7 (about
    one fp32 ulp of a gradient of size 1): the k biases' gradients are 0 in exact math (softmax is shift-invariant),
    so what both impls return there is rounding alone.

    Not for logit_scale and logit_bias: each gradient is one number, a signed sum over the n^2 logits whose error
    cancels to ~0 by chance for some inputs (drawing other models and inputs, transformers' error on d logit_scale
    fell to 9e-8 where ours was 5e-7, both rounding). Their yardstick is 2x the first-order error that transformers'
    logit errors can cause in them, sum_ij w_ij |dl_ij| (sigmoid_loss_sensitivity: n^2 non-negative terms, no
    cancellation), plus the worst-case rounding of the n^2-term sum, n^2 eps sum_ij |term_ij|: a few 1e-6 here, while a
    wrong formula (a dropped exp(scale), a sign, a lost term) is off by a good fraction of the gradient."""
    hf = hf_siglip2()
    ours = (ref if impl == "reference" else fast).Siglip2Model(hf.config)
    ours.load_state_dict(hf.state_dict())
    pv, mask, ss = naflex_inputs(SHAPES[:4], 24)
    ids, am = text_inputs(4, 12, pad_from=[12, 5, 1, 9])
    kw = dict(
        input_ids=ids,
        attention_mask=am,
        pixel_values=pv,
        pixel_attention_mask=mask,
        spatial_shapes=ss,
        return_loss=True,
    )
    oracle = hf_siglip2().double()
    exact_out = oracle(**dict(kw, pixel_values=pv.double()))
    exact_out.loss.backward()
    hf_out = hf(**kw)
    hf_out.loss.backward()
    ours(**kw).loss.backward()
    logits = exact_out.logits_per_text.detach()
    sens = sigmoid_loss_sensitivity(logits, oracle.logit_bias.item())
    dl = (hf_out.logits_per_text.detach().double() - logits).abs()
    eps = torch.finfo(torch.float32).eps
    scalar_tol = {
        k: 2 * (sens[k] * dl).sum().item() + dl.numel() * eps * sens[f"{k} terms"].sum().item()
        for k in ("logit_scale", "logit_bias")
    }
    want, theirs = dict(oracle.named_parameters()), dict(hf.named_parameters())
    for n, p in ours.named_parameters():
        exact = want[n].grad
        err_hf = (theirs[n].grad.double() - exact).abs().max().item()
        err = (p.grad.double() - exact).abs().max().item()
        tol = max(2 * err_hf + 1e-7, scalar_tol.get(n, 0.0))
        assert err <= tol, f"grad {n}: error {err:.3g} > tolerance {tol:.3g} (transformers' error {err_hf:.3g})"


def test_set_impl_and_bound_classes():
    hf = hf_siglip2()
    m = fast.Siglip2Model(hf.config)
    from siglip2.models import modeling

    assert m.impl == "triton" and m.vision_model.impl == "triton"
    assert type(m).__module__ == "siglip2.fast" and type(m).__name__ == "Siglip2Model"
    assert isinstance(m, modeling.Siglip2Model) and not isinstance(m, ref.Siglip2Model)
    m.set_impl("reference")
    assert m.text_model.impl == "reference"
    with pytest.raises(ValueError, match="impl must be one of"):
        m.set_impl("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_fast_model_on_cuda_within_twice_transformers_error(dtype):
    """siglip2.fast on CUDA vs transformers (sdpa) at the same precision, both against a float64 transformers run."""
    import sys

    sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "bench"))
    from bench_model import naflex_batch

    sizes = dict(hidden=288, intermediate=1076, layers=4, heads=4, patch=16, num_patches=256)  # head dim 72: So400m
    oracle = hf_model("Siglip2VisionModel", **sizes).cuda().double()
    hf = hf_model("Siglip2VisionModel", **sizes).cuda().to(dtype)
    hf.load_state_dict(oracle.state_dict())
    ours = fast.Siglip2VisionModel(hf.config).cuda().to(dtype).eval()
    ours.load_state_dict(oracle.state_dict())
    pv, mask, ss, _ = naflex_batch(24, 256, dict(patch_size=16), "cuda", torch.float64)
    with torch.no_grad():
        o = oracle(pv, mask, ss)
        a = hf(pv.to(dtype), mask, ss)
        b = ours(pv.to(dtype), mask, ss)
    m = mask.bool()[..., None]
    for name, x, y, z in (
        ("pooler", o.pooler_output, a.pooler_output, b.pooler_output),
        ("last", o.last_hidden_state * m, a.last_hidden_state * m, b.last_hidden_state * m),
    ):
        err_ref = (y.double() - x).abs().max().item()
        err = (z.double() - x).abs().max().item()
        assert err <= 2 * err_ref + 1e-5, f"{name} {dtype}: fast error {err:.3e} > 2 x transformers error {err_ref:.3e}"


U32 = 2.0**-24  # fp32 unit roundoff
BF16_SEEDS = tuple(range(8))  # model and input draws; transformers' error over all of them is the yardstick
BF16_FAST_SEEDS = (0,)  # the triton model through the interpreter costs ~1.5 s a draw


def _native_bf16() -> str | None:
    """None when oneDNN runs bf16 matmuls natively on this CPU (AVX512-BF16 or AMX-BF16), else why not."""
    if not torch.backends.mkldnn.is_available():
        return "torch was built without oneDNN: every bf16 matmul is upconverted (the 'upconverted' case)"
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        flags = set()
    native = flags & {"avx512_bf16", "amx_bf16"}
    cpu = getattr(torch, "cpu", None)
    for flag, probe in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_tile", "_is_amx_tile_supported")):
        if getattr(cpu, probe, lambda: False)():
            native.add(flag)
    if not native:
        return (
            "this CPU has no native bf16 (no avx512_bf16 / amx_bf16): oneDNN upconverts its bf16 matmuls to fp32, "
            "the path the 'upconverted' case runs"
        )
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if isa != "ALL" and not any(k in isa for k in ("BF16", "AMX", "AVX10")):
        return f"ONEDNN_MAX_CPU_ISA={isa} keeps oneDNN off this CPU's native bf16 ({', '.join(sorted(native))})"
    return None


_NO_NATIVE_BF16 = _native_bf16()


@contextlib.contextmanager
def _bf16_matmuls(path):
    """'native': oneDNN on (AVX512-BF16 / AMX-BF16 instructions where the CPU has them); 'upconverted': oneDNN off,
    so bf16 matmuls take ATen's own GEMM, which converts the operands to fp32."""
    with warnings.catch_warnings():
        # flags() also resets oneDNN's TF32 switch, which warns on a build without Intel GPU support
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=path == "native"):
            yield


def _bf16_draw(seed, mods):
    """One draw of a tiny model and 3 image-text pairs in bf16: per impl (transformers' sdpa and eager paths, then
    `mods`), (output, the float64 logits its loss is a function of); then the float64 oracle on the same bf16
    weights and inputs (the errors are those of the computation, not of rounding the checkpoint)."""
    hf = hf_siglip2(seed=seed).to(torch.bfloat16)
    oracle = copy.deepcopy(hf).double()
    pv, mask, ss = naflex_inputs(SHAPES[:3], 24, seed=seed)
    ids, _ = text_inputs(3, 12, seed=seed)
    kw = dict(input_ids=ids, pixel_values=pv.bfloat16(), pixel_attention_mask=mask, spatial_shapes=ss, return_loss=True)
    runs = {}
    with torch.no_grad():
        exact = oracle(**dict(kw, pixel_values=kw["pixel_values"].double()))
        for attn in ("sdpa", "eager"):
            hf.set_attn_implementation(attn)
            runs[f"transformers-{attn}"] = hf(**kw)
        for mod in mods:
            ours = mod.Siglip2Model(hf.config).to(torch.bfloat16)
            ours.load_state_dict(hf.state_dict())
            runs[mod.__name__] = ours.eval()(**kw)
    scale, bias = math.exp(hf.logit_scale.item()), hf.logit_bias.item()
    out = {}
    for name, o in runs.items():
        if name == fast.__name__:  # the fused loss forms its logits in fp32 from the bf16 embeddings
            logits = o.text_embeds.double() @ o.image_embeds.double().t() * scale + bias
        else:  # transformers' formula: the bf16 logits, promoted to fp32 by its fp32 label matrix
            logits = o.logits_per_text.double()
        out[name] = (o, logits)
    return out, exact, scale, bias


def _sigmoid_loss64(logits):
    n = logits.shape[0]
    y = 2 * torch.eye(n, dtype=torch.float64) - 1
    return -torch.nn.functional.logsigmoid(y * logits).sum().item() / n


def check_bf16_loss(seeds=BF16_SEEDS, fast_seeds=BF16_FAST_SEEDS):
    """The body of test_half_precision_loss_matches_transformers (see there), also run in a subprocess."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small only pay for threads: 10x slower with 2 on a busy 2-core runner
    try:
        draws = {s: _bf16_draw(s, (fast, ref) if s in fast_seeds else (ref,)) for s in seeds}
    finally:
        torch.set_num_threads(threads)
    # transformers' first-order loss error budget, over every draw and both of its attention paths
    budget = {}
    for s, (runs, exact, _, bias) in draws.items():
        w = sigmoid_loss_sensitivity(exact.logits_per_text, bias)["loss"]
        for name, (_, logits) in runs.items():
            budget[s, name] = (w * (logits - exact.logits_per_text).abs()).sum().item()
    yardstick = 2 * max(e for (_, name), e in budget.items() if name.startswith("transformers"))
    for s, (runs, exact, scale, bias) in draws.items():
        for name, (o, logits) in runs.items():
            n, d = logits.shape[0], o.text_embeds.shape[1]
            assert o.loss.dtype == torch.float32, f"{name}: bf16 loss of dtype {o.loss.dtype}, transformers' is fp32"
            loss, exact_loss = o.loss.item(), exact.loss.item()
            # (1) the loss of its own inputs, in fp32: (n^2 + 8) fp32 roundings of L (the softplus terms are >= 0,
            # no cancellation), plus, for the fused loss, d + 2 roundings of each fp32 logit (|t.v| <= 1) times
            # sum |dL/dl| <= n
            own = _sigmoid_loss64(logits)
            fused = n * (d + 2) * (scale + abs(bias)) if name == fast.__name__ else 0.0
            tol = U32 * ((n * n + 8) * abs(own) + fused)
            assert abs(loss - own) <= tol, (
                f"{name} (draw {s}): loss {loss:.7g} != {own:.7g}, the float64 loss of its own bf16 inputs "
                f"(tolerance {tol:.2g}: fp32 arithmetic; a bf16 rounding in the loss is ~{2**-9 * own:.2g})"
            )
            if name.startswith("transformers"):
                continue
            # (2) the logits it feeds the loss, as accurate as transformers' (in the loss's first-order metric)
            dl = (logits - exact.logits_per_text).abs()
            assert budget[s, name] <= yardstick, (
                f"{name} (draw {s}): sum |dL/dl| |dl| = {budget[s, name]:.3g} > 2 x transformers' largest "
                f"{yardstick / 2:.3g} over {len(seeds)} draws (sdpa and eager)"
            )
            # (3) hence the loss itself: |dL| <= (1) + (2) + the second-order remainder sum dl^2 / (8 n)
            bound = yardstick + tol + (dl**2).sum().item() / (8 * n)
            assert abs(loss - exact_loss) <= bound, (
                f"{name} (draw {s}): bf16 loss error {abs(loss - exact_loss):.3g} > {bound:.3g} = 2 x transformers' "
                "first-order error budget + fp32 and second-order terms"
            )


@pytest.mark.parametrize(
    "matmuls",
    [
        pytest.param("native", marks=pytest.mark.skipif(_NO_NATIVE_BF16 is not None, reason=str(_NO_NATIVE_BF16))),
        "upconverted",
    ],
)
def test_half_precision_loss_matches_transformers(matmuls):
    """bf16 models: the loss is fp32 (transformers' fp32 label matrix promotes the bf16 logits) and as accurate as
    transformers', judged against float64 runs of the same bf16 weights and inputs.

    Not "the loss error within 2x transformers' own": one scalar's error is a signed sum over the n^2 logits that
    cancels to ~0 by chance for some inputs. In the draw that test used, transformers' sdpa path missed by 0.0017 on
    an AVX-512 CPU and by 0.019 with ATen's AVX2 kernels, its eager path (which siglip2.reference reproduces bit
    for bit) by 0.023; over 16 draws here each ranged from 1e-4 to 0.017. So the error is split where each part has
    a sound bound:
    (1) the loss as a function of its own inputs (transformers' formula: the bf16 logits; the fused loss: the bf16
        embeddings), within the worst-case fp32 rounding of that computation: a bf16 rounding anywhere in the loss
        costs ~2^-9 of it, > 40x more, and a wrong logit scale or bias in the fused loss shows as well;
    (2) the logits' error, weighted by |dL/dl| (sigmoid_loss_sensitivity: the first-order bound on what it does to
        the loss, n^2 non-negative terms that cannot cancel), within 2x the largest such error of transformers
        (sdpa and eager) over BF16_SEEDS draws of model and inputs. Over 16 draws, on each path below, transformers'
        values ranged 0.005..0.034 and ours never exceeded 0.62 of that bound for any 8 consecutive draws (the
        reference is transformers' eager, bit for bit); a logit bias off by 0.04 already exceeds it;
    (3) hence the loss error, at most (1) + (2) + the second-order remainder.
    The bounds hold on any CPU, Intel or AMD, with or without native bf16: bf16 products are exact in fp32 and every
    matmul path (AVX512-BF16 / AMX instructions, oneDNN's emulation, ATen's upconverting GEMM) accumulates in fp32
    and rounds once to bf16, so the paths differ by fp32 summation order (a one-ulp flip of a bf16 result now and
    then), and transformers, measured on the same CPU in the same run, takes the same paths. Both run here:
    'native' (oneDNN on: AVX512-BF16 / AMX where the CPU has them, else skipped with the reason) and 'upconverted'
    (oneDNN off: ATen's GEMM); test_half_precision_loss_with_avx2_kernels adds ATen's AVX2 kernels.
    """
    with _bf16_matmuls(matmuls):
        check_bf16_loss()


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="not an x86 CPU with AVX2"
)
def test_half_precision_loss_with_avx2_kernels():
    """test_half_precision_loss_matches_transformers' checks on this CPU emulating one without AVX-512 or native
    bf16, in a subprocess (both are fixed when torch loads): ATen's AVX2 kernels (transformers' sdpa among them: in
    the draw the old one-scalar test used, its bf16 loss error was 0.019 there and 0.0017 with the AVX-512 build)
    and oneDNN capped at AVX2, which leaves it no bf16 matmul, so every one takes ATen's upconverting GEMM."""
    code = (
        "import torch, test_modeling as t\n"
        "from launches import count_triton_launches\n"
        "assert torch.backends.cpu.get_cpu_capability() == 'AVX2', torch.backends.cpu.get_cpu_capability()\n"
        "assert not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())\n"
        "with count_triton_launches() as n:\n"
        "    t.check_bf16_loss()\n"
        "assert n[t.LOSS] >= 1 and n[t.PATCH] >= 1 and n[t.ATTN] >= 5, dict(n)\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=os.path.dirname(os.path.abspath(__file__)),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"the AVX2 run failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"


def test_fast_model_runs_in_float64():
    """float64 models (as transformers allows) run: every kernel op routes float64 to its reference under auto."""
    hf = hf_siglip2().double()
    ours = fast.Siglip2Model(hf.config).double()
    ours.load_state_dict(hf.state_dict())
    pv, mask, ss = naflex_inputs(SHAPES[:3], 24)
    ids, _ = text_inputs(3, 12)
    kw = dict(input_ids=ids, pixel_values=pv.double(), pixel_attention_mask=mask, spatial_shapes=ss, return_loss=True)
    with torch.no_grad():
        a, b = hf(**kw), ours.eval()(**kw)
    assert b.loss.dtype == torch.float64
    # transformers itself rounds through fp32 in float64 (eager softmax, CPU position resize): ~1e-7
    _close(a.logits_per_image, b.logits_per_image, "float64 logits")


def test_compile_traces_fast_vision_tower_fullgraph():
    """torch.compile(fullgraph=True) traces the whole packed tower through the kernels' custom ops. This checks
    tracing (no graph break, the Triton kernels still launch); the numbers are checked against transformers, not
    against eager of the same code, which would share any bug."""
    # private: the kernels' own rule for when Triton runs on CPU (TRITON_INTERPRET), not part of their API
    from siglip2.kernels._utils import interpreting

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu" and not interpreting():
        pytest.skip("the Triton path needs CUDA or TRITON_INTERPRET=1 (the reference ops loop on the host)")
    hf = hf_siglip2()
    m = fast.Siglip2VisionModel(hf.config.vision_config)
    m.load_state_dict(hf.vision_model.state_dict())
    m = m.to(dev).eval()
    pv, mask, ss = (t.to(dev) for t in naflex_inputs([(4, 5), (1, 7), (2, 2)], 24))
    with torch.no_grad():
        want = hf.vision_model.to(dev)(pv, mask, ss)
        got = torch.compile(m, fullgraph=True, backend="aot_eager")(pv, mask, ss)
    _close(got.pooler_output, want.pooler_output, "compiled pooler")
    _close(got.last_hidden_state, want.last_hidden_state, "compiled last_hidden_state", mask)
