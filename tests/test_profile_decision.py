"""`siglip2 profile` answers "which max_num_patches": the recommendation from whatever it has, timing that
carries its spread and says when it is unusable, unreadable files skipped and listed, and the decision figure.

Everything but the CLI runs (a tiny checkpoint, 3 budgets, no timing: ~10 s) works on hand-made entries, so the
rules are checked at their edges without a model.
"""

import json

import numpy as np
import PIL.Image
import pytest

from siglip2.__main__ import main
from siglip2.profile.report import flop_rate, recommend, timing_verdict


def _entry(m, *, ips=None, lo=None, hi=None, noisy=False, up=0.0, asp=0.02, gflop=None, cos=None):
    e = {
        "max_num_patches": m,
        "upsampled_fraction": up,
        "aspect_error_mean": asp,
        "aspect_error_p95": 2 * asp,
        "flops_per_image_packed": {"total": (gflop if gflop is not None else m / 10) * 1e9},
        "timing": None,
    }
    if ips is not None:
        e["timing"] = {
            "packed": {
                "images_per_s": ips,
                "images_per_s_lo": ips if lo is None else lo,
                "images_per_s_hi": ips if hi is None else hi,
                "noisy": noisy,
                "n": 9,
            }
        }
    if cos is not None:
        e["drift_cosine_mean"] = cos
        e["drift_cosine_ci95"] = 0.001
    return e


def test_default_run_recommends_from_image_sizes():
    """No model, no target: the largest trained budget at which at most half the images are upsampled, and the
    inputs that would sharpen it are named."""
    entries = [_entry(64), _entry(128), _entry(256, up=0.3), _entry(576, up=0.5), _entry(1024, up=0.51)]
    r = recommend(entries, None, None)
    assert r["max_num_patches"] == 576  # 0.5 is "at most half"; 1024 upsamples most
    assert "image sizes" in r["reason"] and r["basis"] == ["image sizes (upsampled fraction, aspect error)"]
    assert any(s.startswith("--model") for s in r["sharpen"])
    assert any(s.startswith("--target-images-per-s") for s in r["sharpen"])
    # 64 is outside the trained range: never chosen while a trained budget exists, even if nothing else fits
    assert recommend([_entry(64), _entry(128, up=0.9), _entry(256, up=0.9)], None, None)["max_num_patches"] == 128
    # only untrained budgets: the rule applies to them
    assert recommend([_entry(32), _entry(64, up=0.6)], None, None)["max_num_patches"] == 32


def test_drift_rule_uses_the_confidence_bound():
    """A budget whose mean drift is within --max-drift but whose upper 95% bound is not is not recommended."""
    entries = [_entry(64, cos=0.985), _entry(128, cos=0.99), _entry(256, cos=1.0)]
    entries[0]["drift_cosine_ci95"] = 0.006  # mean drift 0.015, bound 0.021 > 0.02
    entries[1]["drift_cosine_ci95"] = 0.006  # 0.010 + 0.006 = 0.016
    assert recommend(entries, 0.02, None)["max_num_patches"] == 128
    entries[0]["drift_cosine_ci95"] = 0.004  # 0.019
    assert recommend(entries, 0.02, None)["max_num_patches"] == 64


def test_drift_needs_two_budgets_and_two_images():
    """One decoded image (no confidence bound) or one budget (nothing to drift from): the drift is not used, and
    the report says so; the recommendation falls back to the image sizes."""
    one_image = [_entry(128, cos=0.99), _entry(256, cos=1.0)]
    for e in one_image:
        e["drift_cosine_ci95"] = None
    r = recommend(one_image, 0.02, None)
    assert r["basis"] == ["image sizes (upsampled fraction, aspect error)"] and "drift was not used" in r["reason"]
    assert any(s.startswith("--quality-images") for s in r["sharpen"])
    r = recommend([_entry(256, cos=1.0)], 0.02, None)
    assert r["basis"] != ["embedding drift"] and "drift was not used" in r["reason"]


def test_t_quantiles():
    from siglip2.profile.cli import t95

    assert t95(1) == pytest.approx(12.706) and t95(30) == pytest.approx(2.042) and t95(1000) == 1.96


def test_timing_verdict_noise_and_contradiction():
    ok = [_entry(64, ips=100.0, lo=95, hi=105), _entry(128, ips=50.0, lo=48, hi=52)]
    assert timing_verdict(ok) == (True, None)
    noisy = [_entry(64, ips=100.0, noisy=True), _entry(128, ips=50.0)]
    usable, why = timing_verdict(noisy)
    assert not usable and "noisy at max_num_patches 64" in why
    # the larger budget "faster" beyond both spreads (2.0 then 18.7 images/s, as a shared CPU once reported)
    contra = [_entry(64, ips=2.0, lo=1.9, hi=2.1), _entry(128, ips=18.7, lo=18.0, hi=19.0)]
    usable, why = timing_verdict(contra)
    assert not usable and "contradict" in why
    # overlapping spreads are no contradiction, nor a gap within the noise threshold (GPU jitter between calls)
    assert timing_verdict([_entry(64, ips=10.0, lo=9, hi=11), _entry(128, ips=10.5, lo=10, hi=12)])[0]
    assert timing_verdict([_entry(64, ips=100.0, lo=99, hi=100), _entry(128, ips=102.0, lo=101, hi=103)])[0]


def test_noisy_timing_recommends_from_flops():
    """A throughput target under unusable timings: images/s estimated from FLOPs per image at the pooled rate."""
    # FLOP rates (images/s x FLOPs) 100e9, 1e9 (noise), 100e9 -> median 100e9 FLOP/s
    entries = [
        _entry(64, ips=10.0, gflop=10.0),
        _entry(128, ips=0.05, gflop=20.0, noisy=True),
        _entry(256, ips=2.5, gflop=40.0),
    ]
    assert flop_rate(entries) == pytest.approx(100e9)
    r = recommend(entries, None, 4.0)  # estimated 10, 5, 2.5 images/s: 128 meets 4
    assert r["max_num_patches"] == 128
    assert r["basis"] == ["FLOPs per image at the pooled packed FLOP rate"]
    assert "estimated from FLOPs" in r["reason"] and "noisy" in r["reason"]
    # the same numbers, usable: measured images/s decide (0.05 at 128 fails the target)
    clean = [dict(e, timing={"packed": dict(e["timing"]["packed"], noisy=False)}) for e in entries]
    clean[1]["timing"]["packed"]["images_per_s"] = clean[1]["timing"]["packed"]["images_per_s_lo"] = 5.0
    clean[1]["timing"]["packed"]["images_per_s_hi"] = 5.0
    assert recommend(clean, None, 4.0)["max_num_patches"] == 128
    clean[1]["timing"]["packed"].update(images_per_s=3.0, images_per_s_lo=3.0, images_per_s_hi=3.0)
    r = recommend(clean, None, 4.0)
    assert r["max_num_patches"] == 64 and r["basis"] == ["measured packed images/s"]


@pytest.fixture(scope="module")
def damaged_dir(tmp_path_factory):
    """Three photos, one JPEG cut inside its header, one cut inside its scan data (a whole header)."""
    d = tmp_path_factory.mktemp("damaged")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(240, 320), (200, 120), (150, 400)]):
        PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"ok{i}.png")
    PIL.Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(d / "whole.jpg", quality=90)
    data = (d / "whole.jpg").read_bytes()
    (d / "cut_header.jpg").write_bytes(data[:200])
    (d / "cut_data.jpg").write_bytes(data[: len(data) // 2])
    (d / "whole.jpg").unlink()
    return d


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random SigLIP2 checkpoint, patch 4, with its preprocessor_config.json."""
    from test_tokenization import _image_processor_dir  # private: the tests' shared checkpoint builder
    from tiny import our_model

    from siglip2.reference import Siglip2Model

    d = tmp_path_factory.mktemp("tiny-decision-ckpt")
    our_model(Siglip2Model, hidden=32, patch=4, num_patches=16).save_pretrained(d)
    _image_processor_dir(d, P=4, M=16)
    return d


def _figure_labels(result):
    from siglip2.profile.plots import decision_figure

    fig = decision_figure(result)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    import matplotlib.pyplot as plt

    plt.close(fig)
    return labels


def test_profile_skips_unreadable_files_and_marks_the_decision(damaged_dir, tiny_checkpoint, tmp_path, capsys):
    """A folder with two truncated JPEGs: exit 0, both listed (header: at the scan; data: when the drift
    measurement decodes it), and decision.png carries the --max-drift line and the recommended budget."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "r.json"
    argv = ["profile", str(damaged_dir), "--model", str(tiny_checkpoint), "--max-num-patches", "16,36,64"]
    argv += ["--no-timing", "--json", str(out), "--plots", str(tmp_path / "plots"), "--no-progress"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    r = json.loads(out.read_text())
    bad = {b["path"].rsplit("/", 1)[-1]: b for b in r["inputs"]["unreadable"]}
    assert set(bad) == {"cut_header.jpg", "cut_data.jpg"}
    assert bad["cut_header.jpg"]["stage"] == "scan" and bad["cut_data.jpg"]["stage"] == "decode"
    assert "skipped 2 unreadable file(s)" in stdout and "cut_header.jpg" in stdout and "cut_data.jpg" in stdout
    assert r["inputs"]["files"] == 4  # the data-truncated file has a size: counted in the shape statistics
    assert all(e["drift_images"] == 3 for e in r["budgets"])  # ... but not in the drift
    assert all(e["drift_cosine_ci95"] >= 0 for e in r["budgets"])
    assert (tmp_path / "plots" / "decision.png").exists()
    m = r["recommendation"]["max_num_patches"]
    assert m is not None and r["recommendation"]["basis"] == ["embedding drift"]
    labels = _figure_labels(r)
    assert f"recommended: max_num_patches {m}" in labels and "--max-drift 0.02" in labels


def test_profile_default_decision_without_model(damaged_dir, tmp_path, capsys):
    """No model and no timing: a recommendation from image sizes (never 'none' for lack of a criterion), the
    figure plots resolution kept against FLOPs, and the report says what would sharpen it."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "r.json"
    argv = ["profile", str(damaged_dir), "--config", "tiny", "--max-num-patches", "64,128,256,576", "--no-timing"]
    assert main([*argv, "--json", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    r = json.loads(out.read_text())
    m = r["recommendation"]["max_num_patches"]
    assert m is not None and "recommendation: none" not in stdout
    assert "sharpen it with --model DIR" in stdout
    labels = _figure_labels(r)
    assert f"recommended: max_num_patches {m}" in labels
    assert any(lab.startswith("aspect-ratio error") for lab in labels)
    assert any(lab.startswith("images upsampled") for lab in labels)


def test_time_budget_reports_the_spread():
    """Every timed mode carries median, quartiles, min, max, sample count and the noisy flag."""
    import types

    import torch

    from siglip2.models.configuration import Siglip2VisionConfig
    from siglip2.profile.cli import time_budget

    cfg = Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)

    def model(pixel_values, pixel_attention_mask, spatial_shapes):
        return types.SimpleNamespace(pooler_output=pixel_values[:, 0])

    g = np.array([[2, 3], [1, 1]], dtype=np.int64)
    r = time_budget({"packed": (model, None, "fake")}, cfg, g, 8, torch.device("cpu"), torch.float32, 3)["packed"]
    assert r["n"] >= 3 and isinstance(r["noisy"], bool)
    assert r["ms_per_batch_min"] <= r["ms_per_batch_q1"] <= r["ms_per_batch"] <= r["ms_per_batch_q3"]
    assert r["ms_per_batch_q3"] <= r["ms_per_batch_max"]
    assert r["images_per_s_lo"] == pytest.approx(2 / (r["ms_per_batch_q3"] * 1e-3))
    assert r["images_per_s_hi"] == pytest.approx(2 / (r["ms_per_batch_q1"] * 1e-3))


def test_oversized_image_is_listed_not_fatal(damaged_dir, monkeypatch):
    """Pillow refuses headers over its pixel limit with DecompressionBombError (not an OSError): the scan lists
    the file and goes on."""
    import PIL.Image

    from siglip2.profile.stats import load_images

    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 20_000)  # 240 x 320 is over twice this: a "bomb"
    images, bad = load_images([str(damaged_dir)], 0, progress=False)
    errors = {b["path"].rsplit("/", 1)[-1]: b["error"] for b in bad}
    assert errors["ok0.png"].startswith("DecompressionBombError")
    assert "ok2.png" in errors and "ok1.png" not in errors  # 150 x 400 is a bomb too; 200 x 120 is not
    assert [im.path.rsplit("/", 1)[-1] for im in images] == ["ok1.png"]
