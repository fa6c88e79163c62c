"""Drop-in parity with transformers on tiny random checkpoints with every parameter perturbed (tests/tiny.py), for
both impls: forward in fp32 within 1e-5, gradients within 2x transformers' own fp32 error, bf16 loss within 2x
transformers' bf16 error (both errors against a float64 run of transformers).

The reference impl must match transformers everywhere, padded rows included. The packed (triton) impl must match on
every valid token and on every pooled/projected output; its padded rows are zeros by design. On CPU the packed impl
runs the kernels through the Triton interpreter (conftest sets TRITON_INTERPRET=1), and every test of it counts the
Triton launches per kernel (NEEDS): a packed path that silently ran an op on its PyTorch reference fails.
"""

import pytest
import torch
from launches import count_triton_launches
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
    with count_triton_launches() as launches:
        yield
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
    so what both impls return there is rounding alone."""
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
    oracle(**dict(kw, pixel_values=pv.double())).loss.backward()
    hf(**kw).loss.backward()
    ours(**kw).loss.backward()
    want, theirs = dict(oracle.named_parameters()), dict(hf.named_parameters())
    for n, p in ours.named_parameters():
        exact = want[n].grad
        err_hf = (theirs[n].grad.double() - exact).abs().max().item()
        err = (p.grad.double() - exact).abs().max().item()
        tol = 2 * err_hf + 1e-7
        assert err <= tol, f"grad {n}: error {err:.3g} > 2 x transformers' {err_hf:.3g} (tolerance {tol:.3g})"


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


def test_half_precision_loss_matches_transformers():
    """transformers' fp32 label matrix promotes bf16 logits: the loss is fp32 in both impls too; its value is
    within 2x transformers' own bf16 error against float64."""
    hf = hf_siglip2().to(torch.bfloat16)
    pv, mask, ss = naflex_inputs(SHAPES[:3], 24)
    ids, _ = text_inputs(3, 12)
    kw = dict(input_ids=ids, pixel_values=pv.bfloat16(), pixel_attention_mask=mask, spatial_shapes=ss, return_loss=True)
    with torch.no_grad():
        want = hf(**kw).loss
        # the tolerance comes from the numbers: transformers' own bf16 error against a float64 oracle
        oracle = hf_siglip2().double()(**dict(kw, pixel_values=pv.double())).loss.item()
        err_hf = abs(want.item() - oracle)
        for mod in (ref, fast):
            ours = mod.Siglip2Model(hf.config).to(torch.bfloat16)
            ours.load_state_dict(hf.state_dict())
            got = ours.eval()(**kw).loss
            assert got.dtype == want.dtype == torch.float32
            err = abs(got.item() - oracle)
            # + 1e-3 (a 16th of a bf16 ulp at this loss, ~2.8): transformers' own error could be ~0 by chance
            tol = 2 * err_hf + 1e-3
            assert err <= tol, f"{mod.__name__}: bf16 loss error {err:.3g} > 2 x transformers' {err_hf:.3g}"


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
