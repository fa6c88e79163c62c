"""`siglip2 profile` (the NaFlex sequence-length profiler) on generated images, a tiny config and a tiny checkpoint.

The shape, token and padding numbers are recomputed here from the processor's own `spatial_shapes`; the drift is
recomputed from the vision tower's pooled embeddings. Runs in-process (no subprocess, ~20 s on 2 CPU cores).
"""

import json
import os
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch

from siglip2.__main__ import main

BUDGET_KEYS = {
    "max_num_patches",
    "images",
    "tokens_mean",
    "tokens_p50",
    "tokens_p95",
    "tokens_min",
    "tokens_max",
    "padding_fraction_padded",
    "padding_fraction_packed",
    "upsampled_fraction",
    "aspect_error_mean",
    "aspect_error_p95",
    "spatial_shapes_hist",
    "flops_per_image_packed",
    "flops_per_image_padded",
    "timing",
    "warnings",
}
TIMING_KEYS = {"images_per_s", "tokens_per_s", "ms_per_batch", "peak_mem_mb", "batch_size", "batch_tokens", "impl"}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Five PNG/JPEG files in a folder and a subfolder, one with an EXIF rotation (90 degrees)."""
    d = tmp_path_factory.mktemp("profile-imgs")
    (d / "sub").mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(480, 640), (100, 120), (300, 1000), (20, 20)]):
        PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            d / ("sub" if i % 2 else ".") / f"im{i}.png"
        )
    img = PIL.Image.fromarray(rng.integers(0, 256, (90, 200, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(d / "sub" / "rot.jpg", exif=exif)
    (d / "notes.txt").write_text("not an image")  # skipped in a folder scan
    return d


def _processor_stats(images, proc, M):
    """tokens and padding computed from the processor's spatial_shapes (the reference for the profiler)."""
    ss = proc(images, max_num_patches=M)["spatial_shapes"].numpy()
    tokens = ss[:, 0] * ss[:, 1]
    return ss, tokens


def _run(argv):
    return main(["profile", *argv, "--no-progress"])


def test_profile_files_synthetic_tiny_config(image_dir, tmp_path, capsys):
    from siglip2.pipeline import load_images
    from siglip2.processing.image_processing import Siglip2ImageProcessor
    from siglip2.profile.stats import collect_paths, synthetic_sizes

    out_json, plots = tmp_path / "p.json", tmp_path / "plots"
    rc = _run(
        [
            str(image_dir),
            "--synthetic",
            "32",
            "--max-num-patches",
            "256,64",
            "--config",
            "tiny",
            "--batch-size",
            "3",
            "--repeats",
            "1",
            "--json",
            str(out_json),
            "--plots",
            str(plots),
        ]
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "## shapes and padding" in stdout and "recommendation:" in stdout
    r = json.loads(out_json.read_text())
    assert {
        "schema_version",
        "environment",
        "model",
        "inputs",
        "settings",
        "budgets",
        "warnings",
        "recommendation",
    } <= set(r)
    assert {"device", "torch", "python", "date", "transformers", "siglip2", "dtype"} <= set(r["environment"])
    assert r["inputs"]["files"] == 5 and r["inputs"]["synthetic"] == 32 and r["inputs"]["images"] == 37
    assert [e["max_num_patches"] for e in r["budgets"]] == [64, 256]

    proc = Siglip2ImageProcessor(patch_size=16)
    files, _ = load_images(collect_paths([str(image_dir)]))
    synth = [np.zeros((h, w, 3), np.uint8) for h, w in synthetic_sizes(32, seed=0)]
    for e in r["budgets"]:
        M = e["max_num_patches"]
        assert set(e) >= BUDGET_KEYS
        ss, tokens = _processor_stats(files + synth, proc, M)
        assert e["images"] == 37
        assert e["tokens_mean"] == pytest.approx(tokens.mean(), abs=1e-9)
        assert e["tokens_p50"] == pytest.approx(np.percentile(tokens, 50), abs=1e-9)
        assert e["tokens_p95"] == pytest.approx(np.percentile(tokens, 95), abs=1e-9)
        assert e["padding_fraction_padded"] == pytest.approx(1 - tokens.sum() / (37 * M), abs=1e-12)
        assert e["padding_fraction_packed"] == 0.0  # the packed encoder computes exactly the valid tokens
        hist = {(h, w): c for h, w, c in e["spatial_shapes_hist"]}
        shapes, counts = np.unique(ss, axis=0, return_counts=True)
        assert hist == {(int(h), int(w)): int(c) for (h, w), c in zip(shapes, counts)}
        native = [(a.shape[0], a.shape[1]) for a in (np.asarray(x) for x in files + synth)]
        up = [gh * gw * 256 > h * w for (gh, gw), (h, w) in zip(ss.tolist(), native)]
        assert e["upsampled_fraction"] == pytest.approx(np.mean(up), abs=1e-12)
        f = e["flops_per_image_packed"]
        assert f["total"] == pytest.approx(f["linear"] + f["attention"] + f["patch_embed"])
        assert e["flops_per_image_padded"]["total"] >= f["total"] > 0
        assert set(e["timing"]) >= {"padded", "packed"}
        for t in e["timing"].values():
            assert set(t) >= TIMING_KEYS and t["images_per_s"] > 0 and t["batch_size"] == 3
            assert t["tokens_per_s"] == pytest.approx(t["images_per_s"] * t["batch_tokens"] / 3)
    assert any("outside" in w and "64" in w for w in r["warnings"])
    assert not any("256 is outside" in w for w in r["warnings"])
    names = {"images_per_s_vs_budget.png", "padding_vs_budget.png", "tokens_per_image_hist.png"}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert names <= set(os.listdir(plots))
    for n in names:
        with PIL.Image.open(plots / n) as im:
            assert im.size[0] > 100
    assert not (plots / "drift_vs_budget.png").exists()  # no model, no drift


def test_profile_plots_without_matplotlib(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    rc = _run(["--synthetic", "4", "--config", "tiny", "--no-timing", "--plots", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert 'pip install -e ".[plot]"' in err
    assert not (tmp_path / "p").exists()


def test_profile_without_transformers_times_our_modes_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    out = tmp_path / "t.json"
    assert (
        _run(
            [
                "--synthetic",
                "6",
                "--config",
                "tiny",
                "--max-num-patches",
                "64",
                "--timing",
                "--repeats",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert set(r["budgets"][0]["timing"]) == {"padded", "packed"}
    assert "padded-sdpa not timed: transformers not installed" in r["settings"]["timing_note"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--max-num-patches", "64,abc"], "--max-num-patches"),
        (["--max-num-patches", "0,64"], "--max-num-patches"),
        (["--config", "huge"], "--config"),
        (["/no/such/image.png"], "no such file"),
        (["--synthetic", "0"], "no images"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_profile_bad_arguments_one_line(argv, needle, capsys):
    rc = _run(["--no-timing", "--synthetic", "2", *argv])  # a later --synthetic overrides the first
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and needle in err, err


def test_profile_default_invocation_is_quick(capsys):
    """No arguments: 1000 synthetic images, B/16 FLOPs, all six budgets; on CPU it skips timing and says so."""
    t0 = time.perf_counter()
    assert _run([]) == 0
    assert time.perf_counter() - t0 < 120
    out = capsys.readouterr().out
    for m in (64, 128, 256, 576, 784, 1024):
        assert f"| {m} |" in out
    if not torch.cuda.is_available():
        assert "timing skipped" in out and "--timing" in out


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from test_tokenization import _image_processor_dir
    from tiny import our_model

    from siglip2.reference import Siglip2Model

    d = tmp_path_factory.mktemp("tiny-profile-ckpt")
    our_model(Siglip2Model, hidden=32, patch=4, num_patches=16).save_pretrained(d)
    _image_processor_dir(d, P=4, M=16)
    return d


def test_profile_model_drift(tiny_checkpoint, image_dir, tmp_path):
    from siglip2.pipeline import load_images
    from siglip2.processing.image_processing import Siglip2ImageProcessor
    from siglip2.profile.stats import collect_paths
    from siglip2.reference import Siglip2VisionModel

    out = tmp_path / "m.json"
    rc = _run(
        [
            str(image_dir),
            "--model",
            str(tiny_checkpoint),
            "--max-num-patches",
            "16,36,64",
            "--no-timing",
            "--json",
            str(out),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    by_m = {e["max_num_patches"]: e for e in r["budgets"]}
    assert by_m[64]["drift_cosine_mean"] == pytest.approx(1.0, abs=1e-12)
    for e in r["budgets"]:
        assert e["drift_cosine_min"] <= e["drift_cosine_mean"] <= 1.0
        assert e["timing"] is None
    assert by_m[16]["drift_cosine_mean"] < 1 - 1e-6  # a different resolution gives a different embedding

    # the drift recomputed from the checkpoint's pooled embeddings
    model = Siglip2VisionModel.from_pretrained(str(tiny_checkpoint)).eval()
    proc = Siglip2ImageProcessor.from_pretrained(str(tiny_checkpoint))
    imgs, _ = load_images(collect_paths([str(image_dir)]))

    def emb(M):
        with torch.no_grad():
            e = model(**proc(imgs, max_num_patches=M)).pooler_output.double()
        return e / e.norm(dim=-1, keepdim=True)

    ref = emb(64)
    for M in (16, 36):
        cos = (emb(M) * ref).sum(-1)
        assert by_m[M]["drift_cosine_mean"] == pytest.approx(cos.mean().item(), abs=1e-5)
    rec = r["recommendation"]
    ok = [m for m in (16, 36, 64) if 1 - by_m[m]["drift_cosine_mean"] + by_m[m]["drift_cosine_ci95"] <= 0.02]
    assert rec["max_num_patches"] == min(ok)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "plots" / "drift_vs_budget.png").exists()


def test_synthetic_distribution_matches_its_stated_source():
    """5% / 95% quantiles of pixels and height/width ratio are the COCO figures quoted in profile_stats."""
    from siglip2.profile.stats import COCO_PIXELS_P05_P95, COCO_RATIO_P05_P95, synthetic_sizes

    hw = np.array(synthetic_sizes(20000, seed=1), dtype=np.float64)
    px, ratio = hw[:, 0] * hw[:, 1], hw[:, 0] / hw[:, 1]
    for v, (lo, hi) in ((px, COCO_PIXELS_P05_P95), (ratio, COCO_RATIO_P05_P95)):
        assert np.percentile(v, 5) == pytest.approx(lo, rel=0.03)
        assert np.percentile(v, 95) == pytest.approx(hi, rel=0.03)
    assert synthetic_sizes(5, seed=3) == synthetic_sizes(5, seed=3)


def test_recommendation_rules():
    from siglip2.profile.report import recommend

    def e(m, cos=None, ips=None):
        d = {"max_num_patches": m, "timing": {"packed": {"images_per_s": ips}} if ips else None}
        if cos is not None:
            d["drift_cosine_mean"] = cos
        return d

    entries = [e(64, 0.9, 400.0), e(256, 0.985, 200.0), e(1024, 1.0, 50.0)]
    assert recommend(entries, 0.02, None)["max_num_patches"] == 256
    assert recommend(entries, 0.2, None)["max_num_patches"] == 64
    assert recommend(entries, 0.02, 150.0)["max_num_patches"] == 256
    assert recommend(entries, 0.02, 300.0)["max_num_patches"] is None
    assert recommend([e(64, ips=400.0), e(256, ips=200.0)], None, 150.0)["max_num_patches"] == 256
    assert recommend([e(64), e(256)], None, 150.0)["max_num_patches"] is None  # no timing


def test_bench_plots_from_a_results_file(tmp_path):
    """bench/plots.py draws every op of a committed bench/run.py results file."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.skip("matplotlib is not installed (the [plot] extra)")
    spec = importlib.util.spec_from_file_location("bench_plots", os.path.join(root, "bench", "plots.py"))
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    import glob

    committed = sorted(glob.glob(os.path.join(root, "bench", "results", "cpu-*", "results.json")))
    assert committed, "no committed bench/run.py CPU results folder"
    with open(committed[-1]) as f:
        results = json.load(f)
    paths = plots.write_bench_plots(results, str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == [
        "attention_tflops_vs_seqlen.png",
        "loss_ms_vs_n.png",
        "model_images_per_s_vs_patches.png",
        "patch_embed_gbps_vs_batch.png",
    ]
    for p in paths:
        with PIL.Image.open(p) as im:
            assert im.size[0] > 100


@pytest.mark.gpu
def test_profile_on_cuda(tmp_path):
    """On CUDA: every execution mode is timed with do_bench, peak memory is reported, the packed path runs Triton."""
    out = tmp_path / "g.json"
    assert (
        _run(
            [
                "--synthetic",
                "64",
                "--config",
                "tiny",
                "--max-num-patches",
                "256,1024",
                "--device",
                "cuda",
                "--batch-size",
                "16",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    for e in r["budgets"]:
        t = e["timing"]
        assert {"padded", "packed"} <= set(t)
        assert "kernels auto" in t["packed"]["impl"]
        for mode in t.values():
            assert mode["images_per_s"] > 0 and mode["peak_mem_mb"] is not None and mode["peak_mem_mb"] >= 0
