"""Our kernels inside transformers' own models: the "siglip2_triton" attention backend (register) and the module
patch (patch_transformers), against the same model on transformers' sdpa path: outputs within 1e-5, every gradient
within 2x sdpa's own fp32 error against the model run in float64.

Models are tiny and random with every parameter perturbed (biases, norms, probe, position table, logit
scale/bias), so a dropped bias or a swapped projection shows. On CPU the kernels run through Triton's
interpreter, and each test proves that Triton kernels launched.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from launches import count_triton_launches
from tiny import hf_model, naflex_inputs, perturb_, text_inputs

from siglip2.fast import patch_transformers, register, unpatch_transformers
from siglip2.integrations import transformers as integ

ATOL = 1e-5


def _siglip2(seed=0):
    return hf_model("Siglip2Model", seed, hidden=32, heads=2)


def _siglip_fixres(seed=0):
    return hf_model("SiglipModel", seed, hidden=32, heads=2, image_size=8)


def _lfm2_vl(seed=0):
    """A vision-language model around a Siglip2 vision tower: its config is Lfm2Vl's own, not tiny.py's."""
    torch.manual_seed(seed)
    cfg = transformers.Lfm2VlConfig(
        vision_config=dict(
            model_type="siglip2_vision_model",
            hidden_size=32,
            intermediate_size=70,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=2,
            num_patches=16,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="lfm2",
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            layer_types=["conv", "full_attention"],
            max_position_embeddings=64,
        ),
        image_token_id=5,
        projector_hidden_size=48,
        downsample_factor=2,
    )
    return perturb_(transformers.Lfm2VlForConditionalGeneration(cfg).eval())


SHAPES = [(3, 4), (4, 4), (1, 5), (2, 2)]  # padded NaFlex rows, a 1xN strip, one full image (L = 16)


def _dual_case(model):
    pv, mask, shapes = naflex_inputs(SHAPES, 16)
    ids, am = text_inputs(4, 8, pad_from=[5, 8, 3, 1])
    kw = dict(
        input_ids=ids,
        attention_mask=am,
        pixel_values=pv,
        pixel_attention_mask=mask,
        spatial_shapes=shapes,
        return_loss=True,
    )

    def outputs(out):
        valid = mask.bool()
        return {
            "loss": out.loss,
            "logits_per_image": out.logits_per_image,
            "image_embeds": out.image_embeds,
            "text_embeds": out.text_embeds,
            "vision_last_valid": out.vision_model_output.last_hidden_state[valid],
            "text_last": out.text_model_output.last_hidden_state,
        }

    return kw, outputs


def _vision_case(model):
    pv, mask, shapes = naflex_inputs(SHAPES, 16)
    kw = dict(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=shapes)

    def outputs(out):
        return {"pooler_output": out.pooler_output, "last_valid": out.last_hidden_state[mask.bool()]}

    return kw, outputs


def _fixres_case(model):
    g = torch.Generator().manual_seed(3)
    ids, am = text_inputs(3, 8, pad_from=[4, 8, 2])
    kw = dict(input_ids=ids, attention_mask=am, pixel_values=torch.randn(3, 3, 8, 8, generator=g), return_loss=True)

    def outputs(out):
        return {
            "loss": out.loss,
            "logits_per_image": out.logits_per_image,
            "vision_last": out.vision_model_output.last_hidden_state,
            "pooled": out.image_embeds,
        }

    return kw, outputs


def _vlm_case(model):
    pv, mask, shapes = naflex_inputs([(4, 4), (2, 6), (4, 2)], 16)
    kw = dict(pixel_values=pv, spatial_shapes=shapes, pixel_attention_mask=mask)

    def outputs(out):
        return {"image_features": torch.cat(out.pooler_output)}

    return kw, outputs


CASES = {
    "Siglip2Model": (_siglip2, _dual_case, None),
    "Siglip2VisionModel": (lambda: _siglip2().vision_model, _vision_case, None),
    "SiglipModel": (_siglip_fixres, _fixres_case, None),
    "Lfm2Vl": (_lfm2_vl, _vlm_case, "model.get_image_features"),
}


def _run(model, kw, outputs, method=None):
    """Forward + backward of a fixed random projection of every output; returns (outputs, grads by name)."""
    model.zero_grad(set_to_none=True)
    fn = model.get_submodule(method.rpartition(".")[0]).get_image_features if method else model
    outs = outputs(fn(**kw))
    g = torch.Generator().manual_seed(7)
    objective = sum((o * torch.randn(o.shape, generator=g).to(o.dtype)).sum() for o in outs.values())
    objective.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in outs.items()}, grads


def _float64(kw):
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}


def _compare(got, want, exact):
    """Outputs within ATOL of sdpa's; each gradient within 2x sdpa's own fp32 error against the same model run in
    float64, plus 1e-6 of the largest gradient of the model (about 8 fp32 ulps of it: the k biases' gradients are 0
    in exact math, so both sides return rounding there).

    That floor also keeps the one-number gradients (logit_scale, logit_bias) sound: sdpa's error on one number is a
    signed sum that can cancel to ~0 by chance (2.5e-7 where ours was 2.1e-6 in one measured draw), but the floor
    (3e-5 to 5e-5 for these models) is over 4x the largest error of ours on them measured over 4 draws of each dual
    model, in both modes (7.2e-6); a wrong formula is off by a good fraction of the gradient (0.01 to 8 here)."""
    (go, gg), (wo, wg), (_, eg) = got, want, exact
    for k in wo:
        err = (go[k] - wo[k]).abs().max().item()
        assert err <= ATOL, f"output {k}: max error {err:.3g} > {ATOL}"
    assert gg.keys() == wg.keys(), f"gradients for different parameters: {sorted(set(gg) ^ set(wg))}"
    floor = 1e-6 * max(g.abs().max().item() for g in eg.values())
    for n in wg:
        err_sdpa = (wg[n].double() - eg[n]).abs().max().item()
        err = (gg[n].double() - eg[n]).abs().max().item()
        tol = 2 * err_sdpa + floor
        assert err <= tol, f"grad {n}: error {err:.3g} > 2 x sdpa's {err_sdpa:.3g} + {floor:.3g}"


@pytest.fixture(autouse=True)
def _backend_registered():
    register(impl="triton")
    yield
    integ._state["impl"] = "auto"  # private: undo register(impl="triton"), which has no public undo


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mode", ["backend", "patch"])
def test_parity_with_sdpa(name, mode):
    build, case, method = CASES[name]
    model = build()
    kw, outputs = case(model)
    model.set_attn_implementation("sdpa")
    exact = _run(copy.deepcopy(model).double(), _float64(kw), outputs, method)
    want = _run(model, kw, outputs, method)
    with count_triton_launches() as launches:
        if mode == "backend":
            if name == "Lfm2Vl":  # per-sub-config form: the LM stays on sdpa (it is causal)
                model.set_attn_implementation({"vision_config": integ.BACKEND, "text_config": "sdpa"})
            else:
                model.set_attn_implementation(integ.BACKEND)
        else:
            paths = patch_transformers(model, kernel_impl="triton")
            assert paths, "nothing was patched"
        got = _run(model, kw, outputs, method)
    _compare(got, want, exact)
    assert launches["_attn_fwd_kernel"] > 0 and launches["_attn_bwd_dq_kernel"] > 0, dict(launches)
    if mode == "patch" and name != "SiglipModel":
        assert sum(n for k, n in launches.items() if "patch" in k) > 0, dict(launches)
    if mode == "patch" and name in ("Siglip2Model", "SiglipModel"):
        assert sum(n for k, n in launches.items() if "loss" in k) > 0, dict(launches)


def test_patch_reports_paths_and_keeps_the_module_tree():
    model = _lfm2_vl()
    before_modules = dict(model.named_modules())
    before_params = {n: p for n, p in model.named_parameters()}
    before_keys = list(model.state_dict())
    paths = patch_transformers(model)
    assert paths == ["model.vision_tower"]
    assert patch_transformers(model) == []  # idempotent
    assert dict(model.named_modules()) == before_modules
    assert all(p is before_params[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == before_keys
    assert unpatch_transformers(model) == ["model.vision_tower"]
    assert "forward" not in model.model.vision_tower.__dict__


def test_unpatch_restores_bit_identical_outputs(tmp_path):
    model = _siglip2()
    kw, outputs = _dual_case(model)
    with torch.no_grad():
        before = outputs(model(**kw))
        originals = {n: m for n, m in model.named_modules()}
        assert sorted(patch_transformers(model)) == ["", "text_model", "vision_model"]
        model.save_pretrained(tmp_path)  # saving a patched model writes transformers' own checkpoint
        reloaded = transformers.Siglip2Model.from_pretrained(tmp_path).eval()
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
        unpatch_transformers(model)
        after = outputs(model(**kw))
    assert all(m is originals[n] for n, m in model.named_modules())
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_padding_is_never_attended():
    """With the backend, changing what sits in the padding rows changes no valid output."""
    model = _siglip2()
    model.set_attn_implementation(integ.BACKEND)
    kw, outputs = _dual_case(model)
    noisy = dict(kw)
    noisy["pixel_values"] = kw["pixel_values"] + 5.0 * (1 - kw["pixel_attention_mask"][..., None].float())
    noisy["input_ids"] = torch.where(kw["attention_mask"].bool(), kw["input_ids"], 7)
    with torch.no_grad():
        a, b = outputs(model(**kw)), outputs(model(**noisy))
    for k in ("vision_last_valid", "image_embeds"):
        assert (a[k] - b[k]).abs().max() <= ATOL, k


def test_backend_without_mask_function_refuses(monkeypatch):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, "siglip2_triton_nomask", integ.siglip2_triton_attention)
    monkeypatch.delitem(AttentionMaskInterface._global_mapping, "siglip2_triton_nomask", raising=False)
    model = _siglip2().vision_model
    model.set_attn_implementation("siglip2_triton_nomask")
    kw, _ = _vision_case(model)
    with pytest.raises(RuntimeError, match="no mask function"):
        model(**kw)


def test_non_padding_masks_fall_back_to_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = False
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(2, 1, 5, 5)
    bias = torch.randn(2, 1, 5, 5, generator=g)
    for mask, kwargs in ((causal, {}), (bias, {}), (None, {"is_causal": True})):
        integ._warned.clear()  # private: the warn-once memory, so that each case warns again
        with pytest.warns(UserWarning, match="sdpa"):
            got = integ.siglip2_triton_attention(module, q, k, v, mask, scaling=0.3, **kwargs)[0]
        want = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3, **kwargs)[0]
        assert torch.equal(got, want)
    # a key-padding mask, materialized per query, takes the kernel (no warning) and matches sdpa
    keys = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    full = keys[:, None, None, :].expand(2, 1, 5, 5).clone()
    got = integ.siglip2_triton_attention(module, q, k, v, full, scaling=0.3)[0]
    want = sdpa_attention_forward(module, q, k, v, full, scaling=0.3)[0]
    assert (got - want).abs().max() <= ATOL


def test_unsupported_transformers_version_is_refused(monkeypatch):
    for old in ("4.57.1", "5.5.0"):  # 5.5: the newest release below the bound, which fails the parity tests
        with pytest.raises(RuntimeError, match=rf"transformers >=5.6,<6.0; found transformers {old}"):
            integ.check_version(old)
    integ.check_version("5.6.0")
    model = _siglip2()
    pristine = copy.deepcopy(model.state_dict())
    monkeypatch.setattr(integ, "_installed_version", lambda: "6.1.0")
    with pytest.raises(RuntimeError, match=r"found transformers 6.1.0"):
        patch_transformers(model)
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(pristine.values(), model.state_dict().values()))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="impl must be one of"):
        register(impl="cuda")
    with pytest.raises(ValueError, match="kernel_impl must be one of"):
        patch_transformers(_siglip2(), kernel_impl="fast")
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module"):
        patch_transformers("google/siglip2-base-patch16-naflex")


def test_patch_follows_parameters_replaced_after_patching():
    """load_state_dict(assign=True) swaps Parameter objects: the patched forward must rebind to the new ones."""
    model = _siglip2().vision_model
    kw, outputs = _vision_case(model)
    patch_transformers(model)
    other = _siglip2(seed=5).vision_model
    model.load_state_dict(other.state_dict(), assign=True)
    with torch.no_grad():
        got, want = outputs(model(**kw)), outputs(other(**kw))
    assert (got["pooler_output"] - want["pooler_output"]).abs().max() <= ATOL
