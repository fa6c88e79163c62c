"""`siglip2 export-kernel DIR` (issue 30): our attention as a Hugging Face kernel-hub build, loaded offline by the
`kernels` package (get_local_kernel, LOCAL_KERNELS) and by transformers through attn_implementation="org/name".

Parity with sdpa uses test_transformers_integration's tolerances (outputs within 1e-5, every gradient within 2x
sdpa's own fp32 error against float64), and each test counts Triton launches to prove that our kernels ran.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
kernels = pytest.importorskip("kernels")

from launches import count_triton_launches
from test_transformers_integration import _compare, _fixres_case, _float64, _run, _siglip2
from tiny import perturb_, text_inputs

import siglip2.kernels as sk
from siglip2.__main__ import main
from siglip2.integrations import kernel_hub as kh

REPO = "siglip2/attention"
LAUNCHED = ("_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hub") / "siglip2-attention"
    assert main(["export-kernel", str(d)]) == 0
    return d


@pytest.fixture
def local_kernels(export_dir, monkeypatch):
    monkeypatch.setenv("LOCAL_KERNELS", f"{REPO}={export_dir}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return export_dir


def test_export_layout_metadata_and_verbatim_sources(export_dir):
    build = export_dir / "build"
    assert sorted(p.name for p in build.iterdir()) == sorted(kh.VARIANTS)
    sources = kh.kernel_sources()
    for variant in kh.VARIANTS:
        meta = kernels.Metadata.read_from_file(build / variant / "metadata.json")  # kernels' own parser
        assert str(meta.name) == "siglip2-attention" and meta.version == kh.EXPORT_FORMAT
        assert meta.id == "_siglip2_attention_" + kh.sources_sha256(sources)[:16]
        pkg = build / variant / "siglip2_attention"
        assert sorted(p.name for p in pkg.glob("*.py")) == sorted([*kh.SOURCES, "__init__.py"])
        for name, data in sources.items():
            assert (pkg / name).read_bytes() == data, f"{variant}/{name} is not a verbatim copy"
    # the variant `kernels` picks here is the noarch one for this backend, not the legacy torch-universal
    assert kernels.get_local_kernel(export_dir).__file__.split(os.sep)[-3] == (
        "torch-cuda" if torch.cuda.is_available() else "torch-cpu"
    )
    with pytest.raises(SystemExit):  # argparse refuses a missing DIR
        main(["export-kernel"])
    assert main(["export-kernel", str(export_dir)]) == 1  # not empty, no --overwrite
    assert main(["export-kernel", str(export_dir), "--overwrite"]) == 0


def test_loaded_module_matches_our_ops_bit_for_bit(export_dir):
    hub = kernels.get_local_kernel(export_dir)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(11, 2, 16, generator=g, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, 3, 3, 11], dtype=torch.int32)
    with count_triton_launches() as launches:
        got = hub.flash_attn_varlen_func(q, k, v, cu, cu, 8, 8, deterministic=True)
        got.sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    want = sk.varlen_attention(q, k, v, cu, cu, 8, 8)
    want.sum().backward()
    assert torch.equal(got, want) and all(torch.equal(a, t.grad) for a, t in zip(grads, (q, k, v)))
    assert all(launches[n] > 0 for n in LAUNCHED), dict(launches)
    # dense flash_attn_func == one varlen call; the attention-interface function == padded_attention
    qb, kb, vb = (torch.randn(2, 5, 2, 16, generator=g) for _ in range(3))
    steps = torch.arange(3, dtype=torch.int32) * 5
    dense = sk.varlen_attention(*(t.reshape(10, 2, 16) for t in (qb, kb, vb)), steps, steps, 5, 5).view(2, 5, 2, 16)
    assert torch.equal(hub.flash_attn_func(qb, kb, vb, softmax_scale=None), dense)
    keep = torch.tensor([[True] * 5, [True, True, False, False, True]])
    q4, k4, v4 = (t.transpose(1, 2) for t in (qb, kb, vb))
    out, probs = hub.siglip2_attention(torch.nn.Module(), q4, k4, v4, keep[:, None, None, :], 0.3, is_causal=False)
    assert probs is None and torch.equal(out, sk.padded_attention(q4, k4, v4, keep, 0.3).transpose(1, 2))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(causal=True), "causal=True"),
        (dict(dropout_p=0.1), "dropout_p=0.1"),
        (dict(window_size=(4, 4)), "window_size=(4, 4)"),
        (dict(softcap=30.0), "softcap=30.0"),
        (dict(alibi_slopes=torch.ones(2)), "alibi_slopes"),
        (dict(return_attn_probs=True), "return_attn_probs"),
    ],
)
def test_refusals(export_dir, kwargs, words):
    hub = kernels.get_local_kernel(export_dir)
    q = torch.randn(4, 2, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match=re.escape(words)):
        hub.flash_attn_varlen_func(q, q, q, cu, cu, 4, 4, **kwargs)
    with pytest.raises(NotImplementedError, match=re.escape(words)):
        hub.flash_attn_func(q[None], q[None], q[None], **kwargs)


def test_attention_function_refuses_causal_and_per_query_masks(export_dir):
    hub = kernels.get_local_kernel(export_dir)
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(NotImplementedError, match="causal"):
        hub.siglip2_attention(torch.nn.Module(), q, q, q, None, is_causal=True)
    tri = torch.ones(4, 4, dtype=torch.bool).tril()[None, None]
    with pytest.raises(NotImplementedError, match="per-query"):
        hub.siglip2_attention(torch.nn.Module(), q, q, q, tri, is_causal=False)


def _clip(seed=0):
    torch.manual_seed(seed)
    text = dict(vocab_size=99, hidden_size=32, intermediate_size=70, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=16)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=70, num_hidden_layers=2, num_attention_heads=2, image_size=8,
                  patch_size=2)  # fmt: skip
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    return perturb_(transformers.CLIPModel(cfg).eval(), seed + 1)


def _dinov2(seed=0):
    """A third vision encoder that supports flash attention (DINOv2: no SigLIP code in it at all)."""
    torch.manual_seed(seed)
    cfg = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=8, patch_size=2
    )
    return perturb_(transformers.Dinov2Model(cfg).eval(), seed + 1)


def _pixels_only(model):
    g = torch.Generator().manual_seed(5)
    kw = dict(pixel_values=torch.randn(2, 3, 8, 8, generator=g))
    return kw, lambda out: {"last": out.last_hidden_state, "pooled": out.pooler_output}


def _siglip_fixres(seed=0):
    from tiny import hf_model

    return hf_model("SiglipModel", seed, hidden=32, heads=2, image_size=8)


def _valid_only(model_kw, am, extra=None):
    """Outputs that do not read padded text rows: transformers' flash wrapper unpads, so a padded query's output is
    0 there (flash-attn's semantics too) but a computed row under sdpa; SigLIP's text pooler takes the last token,
    a pad in padded rows, so text_embeds and the logits differ by design and are left out. The valid rows, the
    image embeddings and every gradient (padded rows feed no valid row) must match."""

    def outputs(out):
        return {
            "image_embeds": out.image_embeds,
            "vision_last": out.vision_model_output.last_hidden_state[extra]
            if extra is not None
            else out.vision_model_output.last_hidden_state,
            "text_last_valid": out.text_model_output.last_hidden_state[am.bool()],
        }

    return model_kw, outputs


def _fixres_full(model):
    """Nothing padded: transformers calls flash_attn_func (dense); everything, the loss included, must match."""
    kw, outputs = _fixres_case(model)
    kw["attention_mask"] = torch.ones_like(kw["attention_mask"])
    return kw, outputs


def _fixres_padded(model):
    g = torch.Generator().manual_seed(3)
    ids, am = text_inputs(3, 8, pad_from=[4, 8, 2])
    return _valid_only(dict(input_ids=ids, attention_mask=am, pixel_values=torch.randn(3, 3, 8, 8, generator=g)), am)


def _naflex_padded(model):
    """Siglip2: padded NaFlex rows (two images: the interpreter is slow) and padded text."""
    from tiny import naflex_inputs

    pv, mask, shapes = naflex_inputs([(3, 4), (2, 2)], 16)
    ids, am = text_inputs(2, 8, pad_from=[5, 8])
    kw = dict(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=shapes)
    return _valid_only(kw, am, mask.bool())


# name -> (build, inputs, attn_implementation); CLIP's text tower is causal (refused), so it stays on sdpa
CASES = {
    "SiglipModel": (_siglip_fixres, _fixres_full, REPO),  # nothing padded: flash_attn_func, and the loss
    "SiglipModel-padded": (_siglip_fixres, _fixres_padded, REPO),  # padded text: flash_attn_varlen_func
    "CLIPModel": (_clip, _fixres_case, {"vision_config": REPO, "text_config": "sdpa"}),
    "Dinov2Model": (_dinov2, _pixels_only, REPO),  # nothing padded: flash_attn_func
    "Siglip2Model": (_siglip2, _naflex_padded, f"{REPO}:siglip2_attention"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_transformers_attn_implementation_matches_sdpa(local_kernels, name):
    build, case, impl = CASES[name]
    model = build()
    kw, outputs = case(model)
    model.set_attn_implementation("sdpa")
    exact = _run(copy.deepcopy(model).double(), _float64(kw), outputs)
    want = _run(model, kw, outputs)
    # The ":function" suffix is ignored for a module that has flash_attn_varlen_func: transformers
    # (integrations/hub_kernels.load_and_register_attn_kernel) wraps it with its own flash wrapper, for every model.
    model.set_attn_implementation(impl)
    with count_triton_launches() as launches:
        got = _run(model, kw, outputs)
    _compare(got, want, exact)
    assert all(launches[n] > 0 for n in LAUNCHED), dict(launches)


def test_causal_text_tower_is_refused_through_transformers(local_kernels):
    model = _clip()
    model.set_attn_implementation(REPO)
    ids, am = text_inputs(2, 6, pad_from=[3, 6])
    with pytest.raises(NotImplementedError, match="causal=True"):
        model.get_text_features(input_ids=ids, attention_mask=am)


def _rewrite_record(directory: Path, **changes) -> None:
    """Edit the export record in every variant's metadata.json and __init__.py (and the kernel id, so that `kernels`
    does not reuse an already imported build)."""
    for variant in kh.VARIANTS:
        meta_path = directory / "build" / variant / "metadata.json"
        meta = json.loads(meta_path.read_text())
        old = json.dumps(meta["siglip2"], sort_keys=True)
        meta["siglip2"].update(changes)
        meta["id"] = "_siglip2_attention_old" + "".join(c for c in str(sorted(changes.items())) if c.isalnum())[:12]
        meta_path.write_text(json.dumps(meta))
        init = directory / "build" / variant / "siglip2_attention" / "__init__.py"
        init.write_text(init.read_text().replace(old, json.dumps(meta["siglip2"], sort_keys=True)))


def test_older_export_fails_clearly(tmp_path, monkeypatch):
    """An export whose kernels differ from the installed siglip2's (as an older export's do) refuses to load, in
    kernels and in transformers, naming both versions and the fix."""
    old = tmp_path / "old"
    kh.export_kernel(str(old))
    for variant in kh.VARIANTS:  # older kernels: one copied file differs
        ref = old / "build" / variant / "siglip2_attention" / "reference.py"
        ref.write_bytes(ref.read_bytes() + b"# an older siglip2\n")
    src = {n: (old / "build" / "torch-cpu" / "siglip2_attention" / n).read_bytes() for n in kh.SOURCES}
    _rewrite_record(old, **{"siglip2-version": "0.0.9", "source-sha256": kh.sources_sha256(src)})
    with pytest.raises(ImportError, match=r"out of date: exported from siglip2 0\.0\.9 .*re-export it"):
        kernels.get_local_kernel(old)
    monkeypatch.setenv("LOCAL_KERNELS", f"siglip2/old={old}")
    with pytest.raises(ValueError, match=r"siglip2/old.*out of date"):
        _siglip_fixres().set_attn_implementation("siglip2/old")


@pytest.mark.parametrize(
    "changes, words",
    [({"format": 0}, "a directory mixed from two exports"), ({"source-sha256": "0" * 64}, "mixed")],
)
def test_metadata_that_disagrees_with_the_code_is_refused(tmp_path, changes, words):
    d = tmp_path / "x"
    kh.export_kernel(str(d))
    for variant in kh.VARIANTS:  # metadata.json only: the code keeps the record it was exported with
        meta_path = d / "build" / variant / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["siglip2"].update(changes)
        meta["id"] += "x" + str(len(str(changes)))
        meta_path.write_text(json.dumps(meta))
    with pytest.raises(ImportError, match=re.escape(words)):
        kernels.get_local_kernel(d)


def test_edited_kernel_files_are_refused(tmp_path):
    d = tmp_path / "e"
    kh.export_kernel(str(d))
    for variant in kh.VARIANTS:
        f = d / "build" / variant / "siglip2_attention" / "attention.py"
        f.write_bytes(f.read_bytes() + b"\n")
        meta_path = d / "build" / variant / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["id"] += "edited"
        meta_path.write_text(json.dumps(meta))
    with pytest.raises(ImportError, match="edited after export"):
        kernels.get_local_kernel(d)


def test_export_runs_without_siglip2(export_dir, tmp_path):
    """In an interpreter where siglip2 cannot be imported, the module runs on its own copy of the kernels (Triton
    launches counted there), and its result equals siglip2.kernels.varlen_attention's bit for bit."""
    import subprocess
    import sys

    script = f"""
import sys
sys.modules["siglip2"] = None  # import siglip2 -> ImportError
import torch, kernels
from pathlib import Path
from launches import count_triton_launches
hub = kernels.get_local_kernel(Path({str(export_dir)!r}))
assert hub.varlen_attention.__module__ == hub.__name__ + ".attention", hub.varlen_attention.__module__
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(11, 2, 16, generator=g) for _ in range(3))
cu = torch.tensor([0, 3, 3, 11], dtype=torch.int32)
with count_triton_launches() as launches:
    out = hub.flash_attn_varlen_func(q, k, v, cu, cu, 8, 8)
assert launches["_attn_fwd_kernel"] > 0, dict(launches)
torch.save((q, k, v, cu, out), {str(tmp_path / "out.pt")!r})
"""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=here)  # not the checkout: siglip2 is blocked anyway; TRITON_INTERPRET inherited
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    q, k, v, cu, out = torch.load(tmp_path / "out.pt")
    assert torch.equal(out, sk.varlen_attention(q, k, v, cu, cu, 8, 8))


def test_siglip2_supports_flash_attention_in_this_transformers(export_dir, monkeypatch):
    """Issue 30 expected Siglip2 to set _supports_flash_attn = False and transformers to refuse a hub kernel for it;
    transformers 5.25 sets it True (modeling_siglip2.Siglip2PreTrainedModel), so nothing is refused, even under a
    name containing "flash" (the only names that check the flag: utils.generic.is_flash_attention_requested)."""
    assert transformers.Siglip2Model._supports_flash_attn is True
    monkeypatch.setenv("LOCAL_KERNELS", f"siglip2/flash-attention={export_dir}")
    model = _siglip2()
    model.set_attn_implementation("siglip2/flash-attention")
    assert model.config.vision_config._attn_implementation == "siglip2/flash-attention"


def test_attention_function_registered_by_hand_matches_sdpa(export_dir):
    """transformers never picks siglip2_attention from the name (the flash wrapper wins); registered by hand with
    sdpa's mask function it runs padded attention, padded query rows included, so even the loss matches."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    hub = kernels.get_local_kernel(export_dir)
    AttentionInterface.register("siglip2_hub_fn", hub.siglip2_attention)
    AttentionMaskInterface.register("siglip2_hub_fn", sdpa_mask)
    model = _siglip_fixres()
    kw, outputs = _fixres_case(model)
    model.set_attn_implementation("sdpa")
    exact = _run(copy.deepcopy(model).double(), _float64(kw), outputs)
    want = _run(model, kw, outputs)
    model.set_attn_implementation("siglip2_hub_fn")
    with count_triton_launches() as launches:
        got = _run(model, kw, outputs)
    _compare(got, want, exact)
    assert all(launches[n] > 0 for n in LAUNCHED), dict(launches)
