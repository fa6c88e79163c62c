"""`siglip2 embed-dataset` end to end on a tiny local checkpoint (no network).

Run: `pytest tests/test_embed_dataset.py` (~40 s on 2 cores; the torchrun test starts two Pythons). Inputs: a
folder of 40 generated images (3 corrupt) with a CSV of captions, and a 2-shard webdataset written with
webdataset's TarWriter. Embeddings are checked against `siglip2.embed` on the same images and texts.
"""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from test_tokenization import _image_processor_dir, make_tokenizer_dir

CORRUPT = ["bad/empty.jpg", "bad/not-an-image.png", "bad/truncated.jpg"]


@pytest.fixture(scope="module", autouse=True)
def _reference_kernels():
    """The packed path on the kernels' PyTorch references: the interpreter is ~10x slower and this file tests the
    pipeline, not the kernels (tests/test_attention.py etc. do). Module scope, so module fixtures see it too.
    test_triton_kernels_run_in_embed_dataset turns the interpreter back on for a few images."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "0")
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tiny import PIPELINE, our_model

    from siglip2.models.modeling import Siglip2Model

    d = tmp_path_factory.mktemp("tiny-siglip2")
    our_model(Siglip2Model, **dict(PIPELINE, heads=2, layers=1)).save_pretrained(d)
    make_tokenizer_dir(d, model_type=None)
    _image_processor_dir(d, P=PIPELINE["patch"], M=PIPELINE["num_patches"])
    return str(d)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """40 files: 37 images (jpg/png, gray/RGBA/RGB, 6-60 px, one in a sub-folder) and 3 corrupt ones; a CSV."""
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    (d / "bad").mkdir()
    (d / "sub").mkdir()
    good = []
    for i in range(37):
        h, w = (int(x) for x in rng.integers(6, 60, 2))
        mode = ["RGB", "L", "RGBA"][i % 3]
        a = rng.integers(0, 256, (h, w, len(mode)) if mode != "L" else (h, w), dtype=np.uint8)
        name = f"{'sub/' if i == 5 else ''}img{i:02d}.{'jpg' if mode != 'RGBA' else 'png'}"
        PIL.Image.fromarray(a, mode).save(d / name)
        good.append(name)
    (d / "bad/empty.jpg").write_bytes(b"")
    (d / "bad/not-an-image.png").write_text("hello")
    full = d / "img00.jpg"
    (d / "bad/truncated.jpg").write_bytes(full.read_bytes()[:200])
    good.sort()
    with open(d / "captions.csv", "w") as f:
        f.write("path,text\n")
        for i, name in enumerate(good[:10]):
            f.write(f"{name},a photo number {i}\n")
    return d, good


@pytest.fixture(scope="module")
def shards(tmp_path_factory, folder):
    """Two tars: 6 + 5 samples with jpg + txt; one sample without an image, one with corrupt bytes."""
    import webdataset as wds

    d = tmp_path_factory.mktemp("wds")
    src, good = folder
    jpgs = [g for g in good if g.endswith(".jpg")][:10]
    expected = []
    for s, part in enumerate([jpgs[:6], jpgs[6:]]):
        with wds.TarWriter(str(d / f"part-{s:03d}.tar")) as w:
            for i, name in enumerate(part):
                key = f"s{s}{i:03d}"
                w.write({"__key__": key, "jpg": (src / name).read_bytes(), "txt": f"caption {key}"})
                expected.append((f"part-{s:03d}/{key}", str(src / name), f"caption {key}"))
            w.write({"__key__": "noimage", "txt": "orphan caption"})
            w.write({"__key__": "corrupt", "jpg": b"\xff\xd8\xff garbage"})
    return str(d / "part-{000..001}.tar"), expected


def _main(*args):
    from siglip2.__main__ import main

    return main(["embed-dataset", *map(str, args)])


def _read(out):
    """{key: embedding} for images and texts, from every shard the manifest lists."""
    from safetensors.torch import load_file

    m = json.loads((out / "manifest.json").read_text())
    img, txt = {}, {}
    for s in m["shards"]:
        for kind, res in (("images", img), ("texts", txt)):
            if kind in s:
                e = load_file(out / s[kind])["embeddings"]
                keys = (out / s["image_keys" if kind == "images" else "text_keys"]).read_text().splitlines()
                assert e.shape[0] == len(keys) == s["rows" if kind == "images" else "text_rows"]
                res.update(zip(keys, e.float()))
    return m, img, txt


def _files(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _same_up_to_storage(a, b):
    """Equal up to one float16 ulp (the stored dtype: fp32 rounding differences can flip its rounding)."""
    return torch.allclose(a, b, rtol=2**-10, atol=1e-6)


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


ARGS = ("--device", "cpu", "--num-workers", "0", "--shard-size", "16", "--batch-size", "7")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, checkpoint, folder):
    out = tmp_path_factory.mktemp("run") / "out"
    assert _main(folder[0], "--out", out, "--model", checkpoint, *ARGS) == 0
    return out


def test_folder_matches_embed_and_logs_errors(folder_run, checkpoint, folder, capsys):
    from siglip2.pipeline import embed

    src, good = folder
    m, img, txt = _read(folder_run)
    assert sorted(img) == good and not txt
    ref = embed([str(src / k) for k in good], model=checkpoint)["image_embeds"]
    ours = torch.stack([img[k] for k in good])
    assert _cos(ours, ref).min() >= 0.9999
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(good)), atol=2e-3)  # stored fp16
    errors = [json.loads(line) for line in (folder_run / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["key"] for e in errors) == CORRUPT and all(e["reason"] for e in errors)
    assert m["counts"] == {"inputs": 40, "images": 37, "texts": 0, "errors": 3, "shards": 3}
    assert m["preprocessing"]["max_num_patches"] == 16 and m["embedding"]["normalized"]
    assert len(m["config_sha256"]) == 64 and m["errors_file"] == "errors.jsonl"
    assert not [p for p in folder_run.iterdir() if ".tmp" in p.name]


def test_resume_after_interrupt_is_identical_and_other_args_refused(
    folder_run, checkpoint, folder, tmp_path, monkeypatch, capsys
):
    from siglip2.embed_dataset.cli import STOP_AFTER_ENV

    out = tmp_path / "out"
    monkeypatch.setenv(STOP_AFTER_ENV, "1")
    with pytest.raises(KeyboardInterrupt):
        _main(folder[0], "--out", out, "--model", checkpoint, *ARGS)
    assert sorted(p.name for p in out.glob("img-*.safetensors")) == ["img-00000.safetensors"]
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid whose process is gone: the writer a crash mid-write killed
    stale = out / f"img-00001.safetensors.tmp-{dead.pid}"
    stale.write_bytes(b"half a file")  # a crash mid-write leaves only a temp
    monkeypatch.delenv(STOP_AFTER_ENV)
    assert _main(folder[0], "--out", out, "--model", checkpoint, *ARGS) == 0
    assert not stale.exists(), "the rerun must remove a killed writer's temp file"
    assert _files(out) == _files(folder_run)
    capsys.readouterr()
    assert _main(folder[0], "--out", out, "--model", checkpoint, *ARGS, "--max-num-patches", "9") == 1
    err = capsys.readouterr().err
    assert "different arguments" in err and "max_num_patches: 16 -> 9" in err
    assert _main(folder[0], "--out", folder[0], "--model", checkpoint, *ARGS) == 1  # someone else's directory
    assert "holds no run.json" in capsys.readouterr().err


def test_webdataset_captions_tokens_per_batch_and_workers(shards, checkpoint, tmp_path):
    from siglip2.pipeline import embed

    url, expected = shards
    out = tmp_path / "out"
    args = ("--device", "cpu", "--num-workers", "2", "--tokens-per-batch", "40", "--store-dtype", "float32")
    assert _main(url, "--out", out, "--model", checkpoint, *args) == 0
    m, img, txt = _read(out)
    keys = [k for k, _, _ in expected]
    assert sorted(img) == sorted(keys) and sorted(txt) == sorted(keys)
    ref = embed([p for _, p, _ in expected], [c for _, _, c in expected], model=checkpoint)
    assert _cos(torch.stack([img[k] for k in keys]), ref["image_embeds"]).min() >= 0.9999
    assert _cos(torch.stack([txt[k] for k in keys]), ref["text_embeds"]).min() >= 0.9999
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["key"] for e in errors) == sorted(f"part-00{s}/{k}" for s in (0, 1) for k in ("noimage", "corrupt"))
    assert m["counts"]["shards"] == 2 and m["counts"]["texts"] == 10


def test_token_batches_of_the_stream(folder):
    """The DataLoader stream under --tokens-per-batch: valid tokens per batch <= T, every good image once."""
    from siglip2.data import NaFlexStream, open_source, plan_units
    from siglip2.processing.image_processing import Siglip2ImageProcessor

    src = open_source(folder[0])
    for T, M in ((16, 16), (37, 16), (50, 9)):
        ip = Siglip2ImageProcessor(patch_size=4, max_num_patches=M)
        s = NaFlexStream(src, plan_units(src, 16), ip, max_num_patches=M, tokens_per_batch=T)
        items = list(s)
        batches = [b for it in items for b in it["batches"]]
        assert all(int(b["pixel_attention_mask"].sum()) == b["num_tokens"] <= T for b in batches)
        assert sorted(k for b in batches for k in b["keys"]) == folder[1]
        assert sum(it["n_inputs"] for it in items) == 40 and sum(len(it["errors"]) for it in items) == 3


def test_csv_captions_column(folder, checkpoint, tmp_path, capsys):
    from siglip2.pipeline import embed

    src, good = folder
    out = tmp_path / "out"
    assert _main(src / "captions.csv", "--out", out, "--model", checkpoint, "--image-column", "path", *ARGS) == 0
    m, img, txt = _read(out)
    assert sorted(img) == sorted(txt) == good[:10] and m["counts"]["texts"] == 10
    ref = embed(texts=[f"a photo number {i}" for i in range(10)], model=checkpoint)["text_embeds"]
    assert _cos(torch.stack([txt[k] for k in good[:10]]), ref).min() >= 0.9999
    capsys.readouterr()
    assert _main(src / "captions.csv", "--out", tmp_path / "out2", "--model", checkpoint, *ARGS) == 1
    assert "no column 'image'" in capsys.readouterr().err
    fast = tmp_path / "fast"
    assert (
        _main(
            src / "captions.csv", "--out", fast, "--model", checkpoint, "--image-column", "path", *ARGS, "--fast-decode"
        )
        == 0
    )
    mf, img_fast, _ = _read(fast)
    assert mf["preprocessing"]["fast_decode"] and sorted(img_fast) == sorted(img)
    # uniform-noise pixels are the worst case for DCT-domain downscaling (photos: docs/benchmarks.md)
    assert min(float(_cos(img_fast[k], img[k])) for k in img) > 0.9


def test_triton_kernels_run_in_embed_dataset(folder_run, checkpoint, folder, tmp_path, monkeypatch):
    """The fast path of embed-dataset launches the Triton kernels (interpreter) and matches the reference-kernel run."""
    import shutil

    from launches import count_triton_launches

    src, good = folder
    names = [n for n in good if "/" not in n][:4]
    sub = tmp_path / "four"
    sub.mkdir()
    for n in names:
        shutil.copy(src / n, sub / n)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "out"
    with count_triton_launches() as launches:
        assert _main(sub, "--out", out, "--model", checkpoint, *ARGS) == 0
    # one patch embedding per batch, one attention per layer (1) and the pooling head
    assert launches["_patch_embed_fwd_kernel"] >= 1 and launches["_attn_fwd_kernel"] >= 2, dict(launches)
    _, img, _ = _read(out)
    _, ref, _ = _read(folder_run)
    assert sorted(img) == sorted(names)
    for n in names:
        assert _same_up_to_storage(img[n], ref[n]), n


@pytest.mark.slow  # torchrun: two more Python processes
def test_torchrun_two_ranks_match_one_process(folder_run, checkpoint, folder, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TRITON_INTERPRET="0")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "siglip2",
        "embed-dataset",
        str(folder[0]),
        "--out",
        str(out),
        "--model",
        checkpoint,
        *ARGS,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    _, img, _ = _read(out)
    _, ref, _ = _read(folder_run)
    # every image once, with its embedding up to rounding: not bit-exact, because each rank batches another subset
    # (and runs one thread), and a GEMM's rounding depends on its shape and threads, which can flip the float16
    # rounding of a stored value (1 of 37 images differs, by 1.9e-6, with the perturbed tiny checkpoint)
    assert sorted(img) == sorted(ref) and all(_same_up_to_storage(img[k], ref[k]) for k in ref)
    a, b = _files(out), _files(folder_run)
    assert a.keys() == b.keys() and all(a[n] == b[n] for n in a if not n.endswith(".safetensors"))
