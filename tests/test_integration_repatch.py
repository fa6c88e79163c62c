"""patch -> unpatch -> patch again (`pytest tests/test_integration_repatch.py`, ~20 s on 2 cores, interpreted).

The second patch must find the same module paths, really run the Triton kernels again (launches counted with
tests/launches.py), and give the first patch's outputs; unpatched in between, no kernel launches and transformers'
own outputs; after each unpatch no marker, forward override or other attribute is left on any module.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from launches import count_triton_launches
from test_transformers_integration import _dual_case, _lfm2_vl, _siglip2, _vision_case

from siglip2.fast import patch_transformers, unpatch_transformers


def _instance_attrs(model):
    return {n: set(vars(m)) for n, m in model.named_modules()}


def _forward(model, kw, outputs):
    with torch.no_grad(), count_triton_launches() as launches:
        out = outputs(model(**kw))
    return out, dict(launches)


def _kernels_ran(launches):
    return (
        launches.get("_attn_fwd_kernel", 0) > 0
        and sum(n for k, n in launches.items() if "patch" in k) > 0
        and sum(n for k, n in launches.items() if "loss" in k) > 0
    )


def test_patch_unpatch_patch_runs_the_kernels_again():
    model = _siglip2()
    kw, outputs = _dual_case(model)
    attrs = _instance_attrs(model)
    forwards = {n: type(m).forward for n, m in model.named_modules()}
    hf, launches = _forward(model, kw, outputs)
    assert launches == {}

    first = sorted(patch_transformers(model, kernel_impl="triton"))
    assert first == ["", "text_model", "vision_model"]
    ours1, launches = _forward(model, kw, outputs)
    assert _kernels_ran(launches), launches

    assert sorted(unpatch_transformers(model)) == first
    assert _instance_attrs(model) == attrs  # no marker, no forward override, nothing else left behind
    assert {n: type(m).forward for n, m in model.named_modules()} == forwards
    back, launches = _forward(model, kw, outputs)
    assert launches == {}, launches
    for k in hf:
        assert torch.equal(back[k], hf[k]), k
    assert unpatch_transformers(model) == []  # nothing left to restore

    assert sorted(patch_transformers(model, kernel_impl="triton")) == first
    ours2, launches = _forward(model, kw, outputs)
    assert _kernels_ran(launches), launches
    for k in ours1:
        assert torch.equal(ours2[k], ours1[k]), k
        assert torch.allclose(ours2[k], hf[k], atol=1e-4), k
    assert sorted(unpatch_transformers(model)) == first
    assert _instance_attrs(model) == attrs


def test_repatch_a_tower_inside_another_model():
    model = _lfm2_vl()
    tower = model.model.vision_tower
    kw, outputs = _vision_case(tower)
    attrs = _instance_attrs(model)
    for _ in range(2):
        assert patch_transformers(model, kernel_impl="triton") == ["model.vision_tower"]
        with torch.no_grad(), count_triton_launches() as launches:
            outputs(tower(**kw))
        assert launches.get("_attn_fwd_kernel", 0) > 0, dict(launches)
        assert unpatch_transformers(model) == ["model.vision_tower"]
        assert _instance_attrs(model) == attrs
