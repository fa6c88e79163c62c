"""Bad inputs to `siglip2 embed-dataset`, `embed --out`, `profile --json` and the data loaders (issue 26, items
10-15, 17, 21, 22, 29, 30): each is refused with a message naming it, or goes to errors.jsonl while the job goes
on; keys round-trip exactly; a tampered or incomplete --out is redone or refused, never silently accepted.
(Crash-between-writes tests of embed-dataset live in another file.)
"""

import json
import os
import stat

import numpy as np
import PIL.Image
import pytest
from test_tokenization import _image_processor_dir, make_tokenizer_dir


@pytest.fixture(scope="module", autouse=True)
def _reference_kernels():
    """The packed path on the kernels' PyTorch references: these tests are about files and records."""
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


def _image(path, seed=0):
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).save(path)


def _main(*args):
    from siglip2.__main__ import main

    return main([*map(str, args)])


ARGS = ("--device", "cpu", "--num-workers", "0", "--batch-size", "2")


def _embed_dataset(inp, out, checkpoint, *extra):
    return _main("embed-dataset", inp, "--out", out, "--model", checkpoint, *ARGS, *extra)


def _rows(out):
    """[(keys, rows)] of every image and text shard the manifest lists."""
    from safetensors.torch import load_file

    from siglip2.embed_dataset.output import read_keys

    m = json.loads((out / "manifest.json").read_text())
    res = []
    for s in m["shards"]:
        for emb, keys in (("images", "image_keys"), ("texts", "text_keys")):
            if emb in s:
                res.append((read_keys(out / s[keys]), load_file(out / s[emb])["embeddings"].shape[0]))
    return res


# ---------------------------------------------------------------- keys (items 11, 15)


@pytest.mark.parametrize(
    "key", ["a.jpg", "sub/b c.png", "a\nb.png", "a\rb", "x\u2028y", '"quoted".jpg', "", "\udcff.jpg", "é.jpg"]
)
def test_keys_round_trip(key, tmp_path):
    from siglip2.embed_dataset.output import decode_key, encode_key, read_keys

    line = encode_key(key)
    assert "\n" not in line and "\r" not in line and decode_key(line) == key
    plain = key and key.isprintable() and not key.startswith('"') and "\udcff" not in key
    assert (line == key) == bool(plain)  # plain keys are stored as they are
    p = tmp_path / "k.txt"
    p.write_text(f"{encode_key(key)}\nplain\n", encoding="utf-8")
    assert read_keys(p) == [key, "plain"]


def test_newline_and_non_utf8_names_and_bad_caption_go_on(checkpoint, tmp_path, capsys):
    """A file name with a newline and one that is not UTF-8 are embedded under keys that round-trip; a JSONL caption
    with a lone surrogate goes to errors.jsonl and the job goes on."""
    d = tmp_path / "imgs"
    d.mkdir()
    _image(d / "a\nb.png", 0)
    _image(os.path.join(os.fsencode(d), b"\xff.png"), 1)
    _image(d / "c.png", 2)
    out = tmp_path / "out"
    assert _embed_dataset(d, out, checkpoint) == 0, capsys.readouterr().err
    [(keys, n)] = _rows(out)
    assert n == 3 and sorted(keys) == sorted(["a\nb.png", os.fsdecode(b"\xff.png"), "c.png"])
    assert os.path.exists(os.path.join(os.fsencode(d), os.fsencode(keys[keys.index(os.fsdecode(b"\xff.png"))])))

    table = tmp_path / "t.jsonl"
    table.write_text(
        json.dumps({"image": "imgs/c.png", "caption": "\udcff"})
        + "\n"
        + json.dumps({"image": "imgs/a\nb.png", "caption": "fine"})
        + "\n"
    )
    out2 = tmp_path / "out2"
    assert _embed_dataset(table, out2, checkpoint) == 0, capsys.readouterr().err
    errors = [json.loads(line) for line in (out2 / "errors.jsonl").read_text().splitlines()]
    assert [e["key"] for e in errors] == ["imgs/c.png"] and "caption" in errors[0]["reason"]
    assert _rows(out2) == [(["imgs/a\nb.png"], 1), (["imgs/a\nb.png"], 1)]


# ---------------------------------------------------------------- folders, lists, tables, tars (12, 14, 22)


def test_symlink_loops_list_each_real_directory_once(tmp_path):
    from siglip2.data import open_source

    _image(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    _image(tmp_path / "sub" / "b.png")
    os.symlink(".", tmp_path / "self")
    os.symlink("..", tmp_path / "sub" / "up")  # two links into ancestors: used to loop forever
    assert [r.key for r in open_source(tmp_path)] == ["a.png", "sub/b.png"]


def test_txt_list_with_bom(tmp_path):
    from siglip2.data import open_source

    _image(tmp_path / "a.png")
    (tmp_path / "l.txt").write_bytes(b"\xef\xbb\xbfa.png\r\nmissing.png\n")
    src = open_source(tmp_path / "l.txt")
    assert [r.key for r in src] == ["a.png", "missing.png"] and os.path.exists(src[0].image)


def test_tables_bom_extra_field_and_invalid_utf8(tmp_path):
    from siglip2.data import open_source

    t = tmp_path / "t.csv"
    t.write_bytes(b"\xef\xbb\xbfimage,caption\na.png,hello\n")
    assert [(r.key, r.caption) for r in open_source(t)] == [("a.png", "hello")]
    t.write_text("caption,path\nx,a.png,extra\n")
    with pytest.raises(ValueError, match=r"t\.csv:2: 3 fields for 2 columns"):
        open_source(t)
    t.write_bytes(b"image,caption\na.png,ok\nb.png,caf\xe9\n")
    with pytest.raises(ValueError, match=r"t\.csv:3 is not valid UTF-8"):
        open_source(t)
    j = tmp_path / "t.jsonl"
    j.write_bytes(b'{"image": "a.png"}\n{"image": "\xff.png"}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:2 is not valid UTF-8"):
        open_source(j)


def test_fifo_and_directory_are_sample_errors_not_a_hang(tmp_path):
    from siglip2.data import SampleError, decode_image, open_source

    _image(tmp_path / "a.png")
    os.mkfifo(tmp_path / "f.png")
    (tmp_path / "l.txt").write_text("a.png\nf.png\n.\n")
    errors = []
    for r in open_source(tmp_path / "l.txt"):
        try:
            decode_image(r)
        except SampleError as e:
            errors.append((e.key, e.reason))
    assert errors == [("f.png", "not a regular file"), (".", "not a regular file")]


def test_table_caption_that_is_not_text_is_refused(tmp_path):
    from siglip2.data import open_source

    j = tmp_path / "t.jsonl"
    j.write_text('{"image": "a.png", "caption": 3}\n{"image": "b.png", "caption": {"en": "x"}}\n')
    with pytest.raises(ValueError, match="row 1: column 'caption' is a dict, not text"):
        open_source(j)


def test_webdataset_repeated_key_is_an_error_not_a_duplicate(tmp_path):
    import webdataset as wds

    from siglip2.data import open_source

    _image(tmp_path / "a.png")
    png = (tmp_path / "a.png").read_bytes()
    with wds.TarWriter(str(tmp_path / "p.tar")) as w:
        for key in ("k1", "k2", "k1"):
            w.write({"__key__": key, "png": png})
        w.write({"__key__": "k3", "png": png, "txt": b"caf\xe9"})
    src = open_source(tmp_path / "p.tar")
    errors = []
    keys = [r.key for r in src.iter_shard(0, on_error=errors.append)]
    assert keys == ["p/k1", "p/k2"]
    assert [e.key for e in errors] == ["p/k1", "p/k3"] and "repeated" in errors[0].reason
    assert "txt member is not valid UTF-8" in errors[1].reason


def test_image_std_zero_is_refused_at_load(tmp_path):
    from siglip2 import CheckpointError
    from siglip2.processing.image_processing import Siglip2ImageProcessor, image_processor_from_pretrained

    for std in ([0, 0, 0], [0.5, 0, 0.5], [0.5, float("inf"), 0.5], [float("nan")] * 3):
        with pytest.raises((TypeError, ValueError), match="image_std"):
            Siglip2ImageProcessor(image_std=std)
    _image_processor_dir(tmp_path)
    cfg = json.loads((tmp_path / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(dict(cfg, image_std=[0, 0, 0])))
    with pytest.raises(CheckpointError, match=r"preprocessor_config\.json: image_std: expected 3 finite non-zero"):
        image_processor_from_pretrained(str(tmp_path))


def test_naflex_collate_refuses_a_zero_budget():
    from siglip2.data import naflex_collate
    from siglip2.processing.image_processing import Siglip2ImageProcessor

    img = PIL.Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="max_num_patches"):
        naflex_collate([("k", img)], Siglip2ImageProcessor(), max_num_patches=0)
    with pytest.raises(TypeError, match="max_num_patches"):
        naflex_collate([("k", img)], Siglip2ImageProcessor(), max_num_patches=2.5)


# ---------------------------------------------------------------- budgets (17)


def test_budgets_are_capped(tmp_path, capsys):
    from siglip2.pipeline import MAX_NUM_PATCHES
    from siglip2.profile.cli import parse_budgets

    assert parse_budgets(f"64,{MAX_NUM_PATCHES}") == [64, MAX_NUM_PATCHES]
    with pytest.raises(ValueError, match=f"1..{MAX_NUM_PATCHES}"):
        parse_budgets("64,1000000000")
    assert _main("embed-dataset", tmp_path, "--out", tmp_path / "o", "--max-num-patches", "1000000000") == 1
    assert f"--max-num-patches: expected 1..{MAX_NUM_PATCHES}, got 1000000000" in capsys.readouterr().err


def test_checkpoint_budget_is_capped(checkpoint, tmp_path, capsys):
    import shutil

    from siglip2.pipeline import MAX_NUM_PATCHES

    ck = tmp_path / "ck"
    shutil.copytree(checkpoint, ck)
    cfg = json.loads((ck / "preprocessor_config.json").read_text())
    (ck / "preprocessor_config.json").write_text(json.dumps(dict(cfg, max_num_patches=10**9)))
    (tmp_path / "imgs").mkdir()
    _image(tmp_path / "imgs" / "a.png")
    assert _embed_dataset(tmp_path / "imgs", tmp_path / "o", ck) == 1
    err = capsys.readouterr().err
    assert "max_num_patches" in err and str(MAX_NUM_PATCHES) in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- output files (10)


def _special_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return [(fifo, "a FIFO"), (tmp_path, "a directory"), ("/dev/null", "a character device")]


def test_embed_out_and_profile_json_write_only_regular_files(tmp_path, capsys):
    for path, kind in _special_files(tmp_path):
        mode = os.stat(path).st_mode
        assert _main("embed", "a cat", "--out", path) == 1
        err = capsys.readouterr().err
        assert f"--out: {os.path.abspath(path)!r} is {kind}" in err
        assert _main("profile", "--synthetic", "1", "--json", path) == 1
        assert f"--json: {os.path.abspath(path)!r} is {kind}" in capsys.readouterr().err
        assert os.stat(path).st_mode == mode
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)


# ---------------------------------------------------------------- resume and tampered output (13, 21, 29)


@pytest.fixture
def small_run(checkpoint, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        _image(d / f"{i}.png", i)
    out = tmp_path / "out"
    assert _embed_dataset(d, out, checkpoint, "--shard-size", "2") == 0
    return d, out


def _files(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_changed_weights_are_refused_on_resume(checkpoint, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "imgs"
    d.mkdir()
    _image(d / "a.png")
    ck, out = tmp_path / "ck", tmp_path / "out"
    shutil.copytree(checkpoint, ck)
    assert _embed_dataset(d, out, ck) == 0
    assert _embed_dataset(d, out, ck) == 0  # the same bytes: resumes (nothing to do)
    w = load_file(ck / "model.safetensors")
    name = next(iter(w))
    w[name] = w[name] + 1  # same shapes, same header size, same config.json
    save_file(w, ck / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert _embed_dataset(d, out, ck) == 1
    assert "weights_sha256" in capsys.readouterr().err
    manifest, run = (json.loads((out / n).read_text()) for n in ("manifest.json", "run.json"))
    assert manifest["weights_sha256"] == run["weights_sha256"] and len(run["weights_sha256"]) == 64


@pytest.mark.parametrize("content", ["[]", "garbage", "", '"x"'])
def test_tampered_run_json_is_named(small_run, checkpoint, content, capsys):
    d, out = small_run
    (out / "run.json").write_text(content)
    assert _embed_dataset(d, out, checkpoint, "--shard-size", "2") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{out / 'run.json'}:" in err


@pytest.mark.parametrize("damage", ["truncate-img", "truncate-txt-keys", "delete-keys", "short-keys"])
def test_incomplete_units_are_redone(small_run, checkpoint, damage, capsys):
    d, out = small_run
    before = _files(out)
    if damage == "truncate-img":
        p = out / "img-00001.safetensors"
        p.write_bytes(p.read_bytes()[:50])
    elif damage == "delete-keys":
        (out / "img-00000.keys.txt").unlink()
    elif damage == "short-keys":
        (out / "img-00000.keys.txt").write_text("0.png\n")
    else:
        (out / "img-00001.keys.txt").write_bytes(b"\xff\n")
    capsys.readouterr()
    assert _embed_dataset(d, out, checkpoint, "--shard-size", "2") == 0
    assert "redoing unit" in capsys.readouterr().err
    assert _files(out) == before


def test_manifest_names_an_incomplete_unit(small_run, checkpoint):
    from siglip2.data import open_source, plan_units
    from siglip2.embed_dataset.output import write_manifest

    d, out = small_run
    run_cfg = json.loads((out / "run.json").read_text())
    (out / "img-00000.keys.txt").unlink()
    units = plan_units(open_source(d), 2)
    with pytest.raises(ValueError, match=r"unit 00000 is incomplete \(.*img-00000\.keys\.txt is missing"):
        write_manifest(str(out), units, run_cfg, None, checkpoint, (32, 32))
