"""Issue 26, items 1-4: the model core never computes with stale weights or returns less than was asked.

- in-place weight edits through `.data` (EMA updates, surgery, pruning, LoRA merges) reach the fused q/k/v GEMM;
- a deep copy or a pickled copy of a patched transformers model computes with its own parameters;
- a patched tower honours hooks on its inner modules and `config.output_hidden_states` set after patching;
- `naflex_patch_embed` refuses a `num_tokens` that disagrees with `cu_seqlens[-1]`.
Shapes are tiny; the kernel path runs the kernels' references where Triton is not the point.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from tiny import hf_model, naflex_inputs, our_model

from siglip2.fast import Siglip2VisionModel, patch_transformers, unpatch_transformers
from siglip2.integrations import transformers as integ
from siglip2.kernels import naflex_patch_embed

SHAPES = [(3, 4), (2, 2)]


def _vision_inputs():
    pv, mask, shapes = naflex_inputs(SHAPES, 16)
    return dict(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=shapes)


def _tower(seed=0):
    m = our_model(Siglip2VisionModel, seed, hidden=32, heads=2)
    m.set_impl("triton", kernel_impl="reference")
    return m


# ------------------------------------------------------------------------------------------- 1. fused q/k/v


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_data_edits_reach_the_fused_qkv(mode):
    model, x = _tower(), _vision_inputs()
    with mode():
        before = model(**x).pooler_output
        model.encoder.layers[0].self_attn.q_proj.weight.data.zero_()
        model.encoder.layers[1].self_attn.v_proj.bias.data.add_(1.0)
        after = model(**x).pooler_output
    fresh = _tower()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        want = fresh(**x).pooler_output
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, rtol=0, atol=0)


def test_ema_update_through_data_is_seen():
    model, src, x = _tower(0), _tower(5), _vision_inputs()
    with torch.no_grad():
        model(**x)  # a forward before the update, as in a training loop's EMA eval
        for p, q in zip(model.parameters(), src.parameters(), strict=True):
            p.data.copy_(q)
        torch.testing.assert_close(model(**x).pooler_output, src(**x).pooler_output, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- 2-3. patched models


@pytest.fixture(autouse=True)
def _fresh_notices():
    integ._warned.clear()  # private: the warn-once memory, so that each test sees its own notice


def _hf_vision(seed=0):
    pytest.importorskip("transformers")
    return hf_model("Siglip2VisionModel", seed, hidden=32, heads=2)


def _pooled(model, x):
    with torch.no_grad():
        return model(**x).pooler_output


def test_patched_ema_update_through_data_is_seen():
    hf, src, x = _hf_vision(0), _hf_vision(7), _vision_inputs()
    patch_transformers(hf, kernel_impl="reference")
    _pooled(hf, x)
    with torch.no_grad():
        for p, q in zip(hf.parameters(), src.parameters(), strict=True):
            p.data.copy_(q)
    torch.testing.assert_close(_pooled(hf, x), _pooled(src, x), atol=1e-5, rtol=1e-5)


def test_deepcopy_of_a_patched_model_uses_its_own_weights():
    hf, x = _hf_vision(), _vision_inputs()
    patch_transformers(hf, kernel_impl="reference")
    want = copy.deepcopy(hf)
    unpatch_transformers(want)
    dup = copy.deepcopy(hf)
    with torch.no_grad():
        for m in (dup, want):
            for p in m.parameters():
                p.mul_(0.5)
    got = _pooled(dup, x)
    assert not torch.allclose(got, _pooled(hf, x))
    torch.testing.assert_close(got, _pooled(want, x), atol=1e-5, rtol=1e-5)
    assert dup.forward.module is dup  # still patched, on the copy


def test_torch_save_of_a_patched_model_round_trips():
    hf, x = _hf_vision(), _vision_inputs()
    patch_transformers(hf, kernel_impl="reference")
    buf = io.BytesIO()
    torch.save(hf, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded.forward.module is loaded
    torch.testing.assert_close(_pooled(loaded, x), _pooled(hf, x), rtol=0, atol=0)
    with torch.no_grad():
        for p in loaded.parameters():
            p.mul_(0.5)
    assert not torch.allclose(_pooled(loaded, x), _pooled(hf, x))


def test_hooks_on_inner_modules_fire_on_a_patched_tower():
    hf, x = _hf_vision(), _vision_inputs()
    want = _pooled(hf, x)
    patch_transformers(hf, kernel_impl="reference")
    seen = []
    handle = hf.encoder.layers[1].register_forward_hook(lambda m, a, o: seen.append(1))
    with pytest.warns(UserWarning, match="hooks on an inner module"):
        got = _pooled(hf, x)
    assert seen == [1]
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the original forward ran
    handle.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _pooled(hf, x)  # transformers' own capturing hooks, installed by the original forward, do not count
    assert seen == [1]


def test_output_hidden_states_set_on_the_config_after_patching():
    hf, x = _hf_vision(), _vision_inputs()
    patch_transformers(hf, kernel_impl="reference")
    hf.config.output_hidden_states = True
    with torch.no_grad():
        out = hf(**x)
    assert out.hidden_states is not None and len(out.hidden_states) == hf.config.num_hidden_layers + 1
    hf.config.return_dict = False
    with torch.no_grad():
        assert isinstance(hf(**x), tuple)


# ------------------------------------------------------------------------------------------- 4. num_tokens


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("num_tokens", [20, 13])
def test_num_tokens_must_match_cu_seqlens(impl, num_tokens):
    torch.manual_seed(0)
    pv, _, shapes = naflex_inputs([(2, 3), (2, 4)], 8)
    w, b, pos = torch.randn(8, 12), torch.randn(8), torch.randn(16, 8)
    cu = torch.tensor([0, 6, 14], dtype=torch.int32)
    with pytest.raises(ValueError, match=rf"num_tokens = {num_tokens}.*cu_seqlens\[-1\] = 14"):
        naflex_patch_embed(pv, shapes, w, b, pos, cu_seqlens=cu, num_tokens=num_tokens, impl=impl)
    out = naflex_patch_embed(pv, shapes, w, b, pos, cu_seqlens=cu, num_tokens=14, impl=impl)
    assert out.shape == (14, 8)
    with pytest.raises(ValueError, match=r"num_tokens.*needs cu_seqlens"):
        naflex_patch_embed(pv, shapes, w, b, pos, num_tokens=16, impl=impl)


# ------------------------------------------------------------------------------------------- own review


def test_pruning_q_proj_is_honoured_by_the_fused_path():
    # prune's forward pre-hook recomputes q_proj.weight from weight_orig; the fused GEMM must not bypass it
    import torch.nn.utils.prune as prune

    model, x = _tower(), _vision_inputs()
    attn = model.encoder.layers[0].self_attn
    prune.l1_unstructured(attn.q_proj, "weight", amount=0.5)
    seen = []
    handle = attn.k_proj.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    with torch.no_grad():
        attn.q_proj.weight_orig.zero_()  # an update to weight_orig, as an optimizer step would make
        got = model(**x).pooler_output
        prune.remove(attn.q_proj, "weight")
        handle.remove()
        want = model(**x).pooler_output
    assert seen, "the hook on k_proj never ran"
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_patched_tower_with_a_parametrized_weight_runs_the_original():
    from torch.nn.utils import parametrize

    class Half(torch.nn.Module):
        def forward(self, w):
            return w * 0.5

    hf, x = _hf_vision(), _vision_inputs()
    patch_transformers(hf, kernel_impl="reference")
    parametrize.register_parametrization(hf.encoder.layers[0].mlp.fc1, "weight", Half())
    with pytest.warns(UserWarning, match="no longer a plain Parameter"):
        got = _pooled(hf, x)
    unpatch_transformers(hf)
    torch.testing.assert_close(got, _pooled(hf, x), rtol=0, atol=0)


def test_patched_tower_with_gradient_checkpointing_runs_the_original():
    hf, x = _hf_vision(), _vision_inputs()
    hf.gradient_checkpointing_enable()
    patch_transformers(hf, kernel_impl="reference")
    hf.train()
    with pytest.warns(UserWarning, match="gradient checkpointing"):
        hf(**x).pooler_output.sum().backward()


@pytest.mark.parametrize("kernel_impl", [None, "reference"])
def test_hooks_on_fused_away_modules_are_refused(kernel_impl):
    model, x = _tower(), _vision_inputs()
    if kernel_impl is None:
        model.set_impl("reference")
    handle = model.embeddings.patch_embedding.register_forward_hook(lambda m, a, o: None)
    with pytest.raises(NotImplementedError, match=r"embeddings\.patch_embedding has hooks"):
        _pooled(model, x)
    handle.remove()
    handle = model.head.attention.register_forward_pre_hook(lambda m, a: None)
    if kernel_impl is None:  # the padded path calls nn.MultiheadAttention: the hook runs
        _pooled(model, x)
    else:
        with pytest.raises(NotImplementedError, match=r"head\.attention has hooks"):
            _pooled(model, x)
