"""Host syncs of a packed vision forward: every tensor -> Python conversion stalls the GPU queue, so the count is
pinned here (issue 12): at most one per forward (the entry check, which also yields the lengths), under no_grad
and inference_mode, and none when the caller passes a PackedBatch. The Triton path runs (interpreter on CPU)."""

import pytest
import torch
from launches import count_triton_launches
from syncs import count_host_syncs
from tiny import naflex_inputs, perturb_, tiny_config_dict

from siglip2.fast import PackedBatch, Siglip2VisionModel

SHAPES = [(3, 4), (4, 4), (1, 5)]


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return perturb_(
        Siglip2VisionModel(tiny_config_dict(hidden=32, heads=2, layers=4)["vision_config"], kernel_impl="triton").eval()
    )


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_one_host_sync_per_forward(tower, mode):
    pv, mask, shapes = naflex_inputs(SHAPES, 16)
    with mode(), count_host_syncs() as syncs, count_triton_launches() as launches:
        out = tower(pv, mask, shapes)
    assert sum(syncs.values()) <= 1, dict(syncs)
    assert launches["_attn_fwd_kernel"] >= 4 + 1, dict(launches)  # one per layer, plus the pooling head
    assert launches["_patch_embed_fwd_kernel"] >= 1, dict(launches)
    assert out.pooler_output.shape == (3, 32)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_no_host_sync_with_a_packed_batch(tower, mode):
    pv, mask, shapes = naflex_inputs(SHAPES, 16)
    packed = PackedBatch.from_spatial_shapes(SHAPES, 16, "cpu", mask)  # host-side shapes: a data loader has them
    with mode():
        want = tower(pv, mask, shapes)
        with count_host_syncs() as syncs:
            got = tower(pv, mask, shapes, packed=packed)
    assert sum(syncs.values()) == 0, dict(syncs)
    assert torch.equal(got.pooler_output, want.pooler_output)
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)


def test_packed_batch_layout():
    mask = naflex_inputs(SHAPES, 16)[1]
    p = PackedBatch.from_spatial_shapes(torch.tensor(SHAPES), 16, "cpu", mask)
    assert p.lengths == (12, 16, 5) and p.total == 33 and p.max_seqlen == 16 and p.batch_size == 3
    assert p.cu_seqlens.tolist() == [0, 12, 28, 33] and p.probe_cu_seqlens.tolist() == [0, 1, 2, 3]
    x = torch.arange(33.0)[:, None]
    padded = p.unpack(x)
    assert padded.shape == (3, 16, 1) and padded[0, 11, 0] == 11 and padded[0, 12, 0] == 0 and padded[2, 4, 0] == 32
    full = PackedBatch.from_spatial_shapes(SHAPES, 16, "cpu")  # no mask: every token is valid, nothing packed away
    assert full.lengths == (16, 16, 16) and full.valid is None
