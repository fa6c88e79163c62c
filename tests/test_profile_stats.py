"""`siglip2 profile`'s statistics at their edges, against hand-computed numbers (`pytest tests/test_profile_stats.py`).

Five images with grids chosen so that each statistic has an exact expectation: one image exactly at its grid's
native size (not upsampled: the edge), one below it (upsampled), one with a 2:1 aspect error, a repeated shape
(the histogram's order). The timed batch's tokens are the sum of h*w over its grids, not the padded size. The
recommendation accepts a budget exactly at --max-drift and exactly at --target-images-per-s.
"""

import types

import numpy as np
import pytest
import torch

from siglip2.models.configuration import Siglip2VisionConfig
from siglip2.profile.report import _warnings, recommend  # private: the warning thresholds, tested alone
from siglip2.profile.stats import Image, flops_per_image, grids, shape_stats

CFG = Siglip2VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)  # P=16
# native (h, w) and the grid the budget gives it (in patches of 16)
NATIVE = [(32, 48), (16, 16), (20, 10), (64, 32), (32, 48)]
GRID = [(2, 3), (1, 1), (2, 1), (2, 2), (2, 3)]
M = 6


def _stats():
    return shape_stats([Image(h, w) for h, w in NATIVE], np.array(GRID, dtype=np.int64), M, CFG)


def test_shape_stats_by_hand():
    s = _stats()
    # tokens [6, 1, 2, 4, 6]
    assert s["images"] == 5 and s["max_num_patches"] == M
    assert s["tokens_mean"] == pytest.approx(19 / 5)
    assert s["tokens_p50"] == 4.0
    assert s["tokens_p95"] == pytest.approx(6.0)  # sorted [1, 2, 4, 6, 6]: between the two 6s
    assert (s["tokens_min"], s["tokens_max"]) == (1, 6)
    assert s["padding_fraction_padded"] == pytest.approx(1 - 19 / 30)
    assert s["padding_fraction_packed"] == 0.0
    # 32x48 -> 32x48 and 16x16 -> 16x16 are at their native size (not upsampled); 20x10 -> 32x16 is upsampled;
    # 64x32 -> 32x32 is downsampled
    assert s["upsampled_fraction"] == pytest.approx(1 / 5)
    # aspect error: only 64x32 -> 32x32 (ratio 2 -> 1: error 1.0); p95 of sorted [0, 0, 0, 0, 1] = 0.8
    assert s["aspect_error_mean"] == pytest.approx(1 / 5)
    assert s["aspect_error_p95"] == pytest.approx(0.8)
    assert s["spatial_shapes_hist"] == [[2, 3, 2], [1, 1, 1], [2, 1, 1], [2, 2, 1]]


def test_flops_by_hand():
    s = _stats()
    D, inter, n, K = 64, 128, 2, 3 * 16 * 16
    toks = np.array([6, 1, 2, 4, 6], dtype=np.float64)
    per_tok_linear = 2 * (4 * D * D + 2 * D * inter)
    linear = n * toks.mean() * per_tok_linear + 4 * toks.mean() * D * D + 4 * D * D + 4 * D * inter  # + head
    attention = n * 4 * (toks**2).mean() * D + 4 * toks.mean() * D
    f = s["flops_per_image_packed"]
    assert f["linear"] == pytest.approx(609484.8) == pytest.approx(linear)
    assert f["attention"] == pytest.approx(10496.0) == pytest.approx(attention)
    assert f["patch_embed"] == pytest.approx(2 * 3.8 * K * D)
    assert f["total"] == pytest.approx(f["linear"] + f["attention"] + f["patch_embed"])
    assert s["flops_per_image_padded"] == flops_per_image(CFG, [M] * 5)
    assert s["flops_per_image_padded"]["attention"] == pytest.approx(n * 4 * 36 * D + 4 * 6 * D)


def test_native_size_is_not_upsampled_through_the_processor():
    """The grids from the real processor: an image whose size is exactly a grid the budget allows keeps it."""
    from siglip2.processing.image_processing import Siglip2ImageProcessor

    proc = Siglip2ImageProcessor(patch_size=16, max_num_patches=M)
    images = [Image(32, 48), Image(31, 48)]
    g = grids(images, proc, M)
    assert g.tolist() == [[2, 3], [2, 3]]
    s = shape_stats(images, g, M, CFG)
    assert s["upsampled_fraction"] == 0.5  # 31 rows -> 32: upsampled; 32 -> 32: not
    assert shape_stats(images[:1], g[:1], M, CFG)["upsampled_fraction"] == 0.0


def test_upsampled_warning_threshold_edge():
    e = {"max_num_patches": 256, "upsampled_fraction": 0.5}
    assert _warnings(e) == []  # exactly half: not "mostly"
    e["upsampled_fraction"] = 0.5 + 1e-9
    assert len(_warnings(e)) == 1 and "upsampled" in _warnings(e)[0]
    assert len(_warnings({"max_num_patches": 1025, "upsampled_fraction": 0.0})) == 1
    assert _warnings({"max_num_patches": 1024, "upsampled_fraction": 0.0}) == []
    assert _warnings({"max_num_patches": 128, "upsampled_fraction": 0.0}) == []


def test_recommendation_edges_are_inclusive():
    entries = [
        {"max_num_patches": 64, "drift_cosine_mean": 0.75, "timing": {"packed": {"images_per_s": 100.0}}},
        {"max_num_patches": 128, "drift_cosine_mean": 0.875, "timing": {"packed": {"images_per_s": 50.0}}},
        {"max_num_patches": 256, "drift_cosine_mean": 1.0, "timing": {"packed": {"images_per_s": 25.0}}},
    ]
    # drift of 128 is exactly 0.125 (binary-exact): accepted; of 64 is 0.25: not
    assert (
        recommend([{k: v for k, v in e.items() if k != "timing"} for e in entries], 0.125, None)["max_num_patches"]
        == 128
    )
    assert (
        recommend([{k: v for k, v in e.items() if k != "drift_cosine_mean"} for e in entries], None, 50.0)[
            "max_num_patches"
        ]
        == 128
    )
    assert recommend(entries, 0.125, 50.0)["max_num_patches"] == 128
    assert recommend(entries, 0.125, 50.0 + 1e-9)["max_num_patches"] is None


def test_timed_batch_tokens_are_the_valid_ones():
    from siglip2.profile.cli import time_budget

    seen = {}

    def model(pixel_values, pixel_attention_mask, spatial_shapes):
        seen["mask"] = pixel_attention_mask.clone()
        return types.SimpleNamespace(pooler_output=pixel_values[:, 0])

    g = np.array([[2, 3], [1, 1], [1, 4]], dtype=np.int64)
    out = time_budget({"packed": (model, None, "fake")}, CFG, g, 8, torch.device("cpu"), torch.float32, 1)
    r = out["packed"]
    assert r["batch_tokens"] == 6 + 1 + 4  # not 3 * 8 padded rows
    assert r["batch_size"] == 3
    assert r["tokens_per_s"] == pytest.approx(11 / (r["ms_per_batch"] * 1e-3))
    assert r["images_per_s"] == pytest.approx(3 / (r["ms_per_batch"] * 1e-3))
    assert seen["mask"].sum(1).tolist() == [6, 1, 4]
