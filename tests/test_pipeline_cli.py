"""Zero-shot pipeline and command line on a tiny local checkpoint (no network).

Run: `pytest tests/test_pipeline_cli.py` (~20 s: two subprocess runs import torch). The checkpoint is a random
transformers Siglip2Model (hidden 32, patch 4, 16 patches, every parameter perturbed: tests/tiny.py) saved with our
tokenizer files and a preprocessor_config.json; pipeline scores are checked against transformers' zero-shot
pipeline. Every run of our fast model (pipeline, CLI in-process and in a subprocess) counts its Triton launches: on
CPU the kernels run through the interpreter, and a path that fell back to the PyTorch reference fails.
"""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from launches import count_triton_launches
from tiny import save_pipeline_checkpoint

LABELS = ["cat", "dog", "red circle", "Blue Square"]
# What one zero-shot run of our fast model must launch at least: the patch embedding, and one attention per layer
# of each tower (2 each) plus the pooling head. Fewer: some op ran on its PyTorch reference.
FAST = {"_patch_embed_fwd_kernel": 1, "_attn_fwd_kernel": 2 + 1 + 2}


def assert_fast_path_ran(launches, need=None):
    need = FAST if need is None else need
    short = {k: (launches.get(k, 0), n) for k, n in need.items() if launches.get(k, 0) < n}
    assert not short, f"Triton launches (got, needed) below the minimum: {short}; all: {dict(launches)}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(directory, transformers model) for a tiny NaFlex checkpoint."""
    d = tmp_path_factory.mktemp("tiny-siglip2")
    return str(d), save_pipeline_checkpoint(d)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(30, 50), (64, 20), (9, 9)]):
        p = d / f"img{i}.png"
        PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _hf_pipeline_scores(checkpoint, paths):
    from transformers import AutoTokenizer, Siglip2ImageProcessorPil, pipeline

    d, model = checkpoint
    pipe = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=AutoTokenizer.from_pretrained(d),
        image_processor=Siglip2ImageProcessorPil.from_pretrained(d),
        device="cpu",
    )
    return [pipe(PIL.Image.open(p), candidate_labels=LABELS) for p in paths]


def _assert_results_close(ours, ref, atol=1e-5):
    """Same labels in the same order, fp32 scores in [0, 1] within 1e-5 (measured differences: <= 3e-7)."""
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert [x["label"] for x in a] == [x["label"] for x in b]
        assert np.allclose([x["score"] for x in a], [x["score"] for x in b], atol=atol, rtol=0)
        scores = [x["score"] for x in a]
        assert scores == sorted(scores, reverse=True)


def test_pipeline_with_transformers_model_matches_hf_pipeline(checkpoint, images):
    from siglip2.pipeline import zero_shot_classify
    from siglip2.processing.processor import Siglip2Processor

    d, model = checkpoint
    ours = zero_shot_classify(images, LABELS, model=model, processor=Siglip2Processor.from_pretrained(d))
    _assert_results_close(ours, _hf_pipeline_scores(checkpoint, images))
    one = zero_shot_classify(images[0], LABELS, model=model, processor=Siglip2Processor.from_pretrained(d))
    assert isinstance(one, list) and isinstance(one[0], dict) and len(one) == len(LABELS)


def test_pipeline_with_our_model_from_directory(checkpoint, images):
    from siglip2.pipeline import zero_shot_classify

    with count_triton_launches() as launches:
        ours = zero_shot_classify(images, ",".join(LABELS), model=checkpoint[0])
    assert_fast_path_ran(launches)
    _assert_results_close(ours, _hf_pipeline_scores(checkpoint, images))


def test_pipeline_exif_transpose_and_errors(checkpoint, tmp_path):
    from siglip2.pipeline import load_images, zero_shot_classify

    img = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (10, 30, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif)
    loaded, single = load_images(str(p))
    assert single and loaded[0].size == (10, 30) and loaded[0].mode == "RGB"
    d, model = checkpoint
    with pytest.raises(ValueError, match="processor"):
        zero_shot_classify(img, LABELS, model=model)
    with pytest.raises(ValueError, match="candidate_labels"):
        zero_shot_classify(img, [], model=d)
    with pytest.raises(ValueError, match="template"):
        zero_shot_classify(img, LABELS, model=d, template="no placeholder")


# `python -m siglip2 ARGS` with the Triton launches counted and written to the file $SIGLIP2_TEST_LAUNCHES
_COUNTED_MAIN = """
import json, os, runpy, sys
sys.path.insert(0, sys.argv.pop(1))
from launches import count_triton_launches
try:
    with count_triton_launches() as launches:
        runpy.run_module("siglip2", run_name="__main__", alter_sys=True)
finally:
    with open(os.environ["SIGLIP2_TEST_LAUNCHES"], "w") as f:
        json.dump(dict(launches), f)
"""


def _cli(*args, env=None, launches=None):
    """Run the command line in a subprocess; with `launches` (a path), count its Triton launches into that file."""
    e = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    cmd = [sys.executable, "-m", "siglip2", *args]
    if launches is not None:
        e["SIGLIP2_TEST_LAUNCHES"] = str(launches)
        cmd = [sys.executable, "-c", _COUNTED_MAIN, os.path.dirname(os.path.abspath(__file__)), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=300)


def test_cli_classify_and_embed(checkpoint, images, tmp_path):
    from safetensors import safe_open

    from siglip2.__main__ import main

    d, model = checkpoint
    out = tmp_path / "emb" / "e.safetensors"
    counted = tmp_path / "launches.json"
    r = _cli(
        "embed",
        images[0],
        "a photo of a cat",
        "dog",
        "--model",
        d,
        "--out",
        str(out),
        "--device",
        "cpu",
        launches=counted,
    )
    assert r.returncode == 0, r.stderr
    assert_fast_path_ran(json.loads(counted.read_text()))
    with safe_open(str(out), "pt") as f:
        meta, img, txt = f.metadata(), f.get_tensor("image_embeds"), f.get_tensor("text_embeds")
    assert json.loads(meta["images"]) == [images[0]] and json.loads(meta["texts"]) == [
        "a photo of a cat",
        "dog",
    ]
    assert img.shape == (1, 32) and txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert not [f for f in out.parent.iterdir() if ".tmp" in f.name]
    from siglip2.processing.processor import Siglip2Processor

    proc = Siglip2Processor.from_pretrained(d)
    with torch.no_grad():
        ref = model.get_image_features(**proc.image_processor(PIL.Image.open(images[0])))
    ref = getattr(ref, "pooler_output", ref)
    assert torch.allclose(img, ref / ref.norm(dim=-1, keepdim=True), atol=1e-5)

    with count_triton_launches() as launches:
        rc = main(["classify", *images, "--labels", ",".join(LABELS), "--model", d, "--json", "--device", "cpu"])
    assert rc == 0
    assert_fast_path_ran(launches)


def test_cli_classify_json_output(checkpoint, images, capsys):
    from siglip2.__main__ import main

    d, _ = checkpoint
    with count_triton_launches() as launches:
        rc = main(["classify", *images[:2], "--labels", ",".join(LABELS), "--model", d, "--json", "--device", "cpu"])
    assert rc == 0
    assert_fast_path_ran(launches)
    data = json.loads(capsys.readouterr().out)
    assert [x["image"] for x in data] == images[:2]
    _assert_results_close([x["scores"] for x in data], _hf_pipeline_scores(checkpoint, images[:2]))
    assert main(["classify", images[0], "--labels", "cat,dog", "--model", d, "--device", "cpu"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == images[0] and len(table) == 3


def test_cli_offline_without_checkpoint_fails_with_one_line(images, tmp_path):
    r = _cli("classify", images[0], "--labels", "a,b", env={"HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--model" in lines[0] and "directory" in lines[0], r.stderr


def test_cli_bad_inputs(checkpoint, tmp_path, capsys):
    from siglip2.__main__ import main

    d, _ = checkpoint
    assert main(["classify", str(tmp_path / "missing.png"), "--labels", "a,b", "--model", d, "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.png" in err[0]
    assert main(["classify", str(tmp_path), "--labels", "a,b", "--model", str(tmp_path / "nope")]) == 2
    assert main(["classify", "x.png", "--labels", " , ", "--model", d]) == 1


def test_fixres_checkpoint_pipeline(tmp_path, images):
    """model_type "siglip": no lowercasing, (B, 3, H, W) pixels, our SiglipModel loaded from the directory."""
    from transformers import AutoTokenizer, SiglipImageProcessorPil, pipeline

    from siglip2.pipeline import zero_shot_classify

    model = save_pipeline_checkpoint(tmp_path, "SiglipModel", seed=1)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "SiglipImageProcessor",
                "do_resize": True,
                "resample": 2,
                "size": {"height": 16, "width": 16},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
                "do_convert_rgb": True,
            }
        )
    )
    pipe = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=AutoTokenizer.from_pretrained(tmp_path),
        image_processor=SiglipImageProcessorPil.from_pretrained(tmp_path),
        device="cpu",
    )
    ref = [pipe(PIL.Image.open(p), candidate_labels=LABELS) for p in images]
    with count_triton_launches() as launches:
        ours = zero_shot_classify(images, LABELS, model=str(tmp_path))
    assert_fast_path_ran(launches)
    _assert_results_close(ours, ref)


@pytest.mark.gpu
def test_pipeline_on_cuda(checkpoint, images):
    from siglip2.pipeline import load_model, zero_shot_classify
    from siglip2.processing.processor import Siglip2Processor

    d, _ = checkpoint
    model, _ = load_model(d, device="cuda")
    ours = zero_shot_classify(images, LABELS, model=model, processor=Siglip2Processor.from_pretrained(d))
    _assert_results_close(ours, _hf_pipeline_scores(checkpoint, images), atol=1e-3)


def test_embed_single_text_and_image_are_not_split(checkpoint, images):
    from siglip2.pipeline import embed

    with count_triton_launches() as launches:
        out = embed(images=images[0], texts="a cat", model=checkpoint[0])
    assert_fast_path_ran(launches)
    assert out["text_embeds"].shape[0] == 1 and out["image_embeds"].shape[0] == 1


def test_cli_embed_missing_image_path_is_an_error(checkpoint, tmp_path, capsys):
    from siglip2.__main__ import main

    rc = main(
        [
            "embed",
            str(tmp_path / "typo.pngg.png"),
            "a cat",
            "--model",
            checkpoint[0],
            "--out",
            str(tmp_path / "e.safetensors"),
        ]
    )
    assert rc == 1 and "looks like an image path" in capsys.readouterr().err
    assert not (tmp_path / "e.safetensors").exists()
