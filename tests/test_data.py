"""siglip2.data without a model: sources and keys, decode errors, NaFlex collate against the processor, fast decode,
rank sharding and token batching, and the streaming pipeline (units, NaFlexStream, its DataLoader, DevicePrefetcher).

Run: `pytest tests/test_data.py` (~3 s).
"""

import functools
import io
import itertools
import json
import operator
import random

import numpy as np
import PIL.Image
import pytest
import torch

from siglip2 import data


def _save(path, h, w, seed=0, fmt=None):
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)


def test_folder_list_and_table_sources(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    _save(tmp_path / "z.png", 8, 9)
    _save(tmp_path / "a" / "b" / "y.JPG", 8, 9)
    (tmp_path / "notes.md").write_text("not an image")
    src = data.open_source(tmp_path)
    assert isinstance(src, data.FileSource) and [r.key for r in src] == ["a/b/y.JPG", "z.png"]
    assert src[1].image == str(tmp_path / "z.png") and src[1].caption is None and not src.has_captions

    (tmp_path / "list.txt").write_text("z.png\n\n# comment\na/b/y.JPG\n")
    assert [(r.key, r.image) for r in data.open_source(tmp_path / "list.txt")] == [
        ("z.png", str(tmp_path / "z.png")),
        ("a/b/y.JPG", str(tmp_path / "a/b/y.JPG")),
    ]

    (tmp_path / "t.csv").write_text("image,caption,text\nz.png,a cat,ignored\na/b/y.JPG,,x\n")
    recs = list(data.open_source(tmp_path / "t.csv"))
    assert [(r.key, r.caption) for r in recs] == [("z.png", "a cat"), ("a/b/y.JPG", "")]
    recs = list(data.open_source(tmp_path / "t.csv", text_column="text"))
    assert [r.caption for r in recs] == ["ignored", "x"]
    (tmp_path / "t.jsonl").write_text(json.dumps({"img": "z.png", "text": "a dog"}) + "\n")
    recs = list(data.open_source(tmp_path / "t.jsonl", image_column="img"))
    assert recs == [data.Record("z.png", str(tmp_path / "z.png"), "a dog")]

    with pytest.raises(ValueError, match="image_column"):
        data.open_source(tmp_path / "t.jsonl")
    with pytest.raises(ValueError, match=r"text_column.*'nope'"):
        data.open_source(tmp_path / "t.csv", text_column="nope")
    with pytest.raises(FileNotFoundError, match="input"):
        data.open_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        data.open_source(tmp_path / "empty")
    (tmp_path / "dup.txt").write_text("z.png\nz.png\n")
    with pytest.raises(ValueError, match="twice"):
        data.open_source(tmp_path / "dup.txt")


def test_webdataset_source_keys_captions_and_errors(tmp_path):
    import webdataset as wds

    buf = io.BytesIO()
    _save(buf, 5, 7, fmt="PNG")
    for s in range(2):
        with wds.TarWriter(str(tmp_path / f"d-{s}.tar")) as w:
            w.write({"__key__": f"k{s}", "png": buf.getvalue(), "txt": f"cap {s}"})
            w.write({"__key__": "nocap", "jpg": b"\xff\xd8 broken"})
            w.write({"__key__": "noimg", "json": b"{}"})
    src = data.open_source(str(tmp_path / "d-{0..1}.tar"))
    assert isinstance(src, data.WebDatasetSource) and len(src.shards) == 2
    assert data.open_source(tmp_path).shards == src.shards  # a folder of tars only
    errors = []
    recs = list(src.iter_shard(1, on_error=errors.append))
    assert [(r.key, r.caption) for r in recs] == [("d-1/k1", "cap 1"), ("d-1/nocap", None)]
    assert [e.key for e in errors] == ["d-1/noimg"] and "no image member" in errors[0].reason
    assert data.decode_image(recs[0]).size == (7, 5)
    with pytest.raises(data.SampleError) as e:
        data.decode_image(recs[1])
    assert e.value.key == "d-1/nocap" and "cannot decode" in e.value.reason
    with pytest.raises(data.SampleError, match="no image member"):
        list(src)


def test_decode_errors_are_named(tmp_path):
    _save(tmp_path / "ok.jpg", 20, 30)
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:100])
    (tmp_path / "txt.png").write_text("hello")
    for name, reason in [("missing.png", "missing file"), ("trunc.jpg", "cannot decode"), ("txt.png", "cannot decode")]:
        with pytest.raises(data.SampleError, match=reason) as e:
            data.decode_image(data.Record(name, str(tmp_path / name)))
        assert e.value.key == name and isinstance(e.value, ValueError)
    gray = PIL.Image.fromarray(np.zeros((4, 6), np.uint8))
    gray.save(tmp_path / "g.png")
    assert data.decode_image(str(tmp_path / "g.png")).mode == "RGB"


def test_collate_matches_processor_and_tokenizer(tmp_path):
    from test_tokenization import make_tokenizer_dir

    from siglip2.processing.image_processing import Siglip2ImageProcessor
    from siglip2.processing.tokenization import Siglip2Tokenizer

    ip = Siglip2ImageProcessor(patch_size=4, max_num_patches=16)
    rng = np.random.default_rng(0)
    imgs = [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(9, 30), (40, 12)]]
    tok = Siglip2Tokenizer.from_pretrained(make_tokenizer_dir(tmp_path, "siglip2"))
    for M in (16, 6):
        b = data.naflex_collate([("a", imgs[0], "a cat"), ("b", imgs[1], None)], ip, max_num_patches=M, tokenizer=tok)
        ref = ip(imgs, max_num_patches=M)
        for k in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
            assert torch.equal(b[k], ref[k]), k
        assert b["keys"] == ["a", "b"] and b["has_caption"].tolist() == [True, False]
        assert torch.equal(
            b["input_ids"], tok(["a cat", ""], padding="max_length", max_length=64, truncation=True)["input_ids"]
        )
    # arrays, tensors and gray / RGBA PIL images go through the processor's RGB conversion
    arr = np.array(imgs[1])
    others = [arr, torch.from_numpy(arr).permute(2, 0, 1), imgs[1].convert("RGBA"), imgs[1].convert("L")]
    b = data.naflex_collate([(str(i), im) for i, im in enumerate(others)], ip)
    assert torch.equal(b["pixel_values"], ip(others)["pixel_values"])
    half = data.naflex_collate([("a", imgs[0])], ip, dtype=torch.bfloat16)
    assert half["pixel_values"].dtype == torch.bfloat16 and "input_ids" not in half
    with pytest.raises(ValueError, match="empty"):
        data.naflex_collate([], ip)


def test_fast_decode_keeps_the_exact_naflex_size(tmp_path):
    from siglip2.processing.image_processing import Siglip2ImageProcessor

    # a smooth photo-like JPEG, large against the budget, with an EXIF rotation
    y, x = np.mgrid[0:600, 0:1000]
    a = np.stack([(x / 4) % 256, (y / 3) % 256, ((x + y) / 8) % 256], -1).astype(np.uint8)
    img = PIL.Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "p.jpg", quality=95, exif=exif)
    ip = Siglip2ImageProcessor(patch_size=16, max_num_patches=64)
    exact = data.decode_image(str(tmp_path / "p.jpg"))
    fast = data.decode_image(str(tmp_path / "p.jpg"), fast=(16, 64))
    assert exact.size == (600, 1000) and fast.size[0] < 600 and fast.size[0] / fast.size[1] == pytest.approx(0.6, 0.02)
    be, bf = (data.naflex_collate([("k", im)], ip) for im in (exact, fast))
    assert torch.equal(be["spatial_shapes"], bf["spatial_shapes"])
    assert torch.equal(be["pixel_attention_mask"], bf["pixel_attention_mask"])
    assert (be["pixel_values"] - bf["pixel_values"]).abs().mean() < 0.05  # in [-1, 1] units
    mixed = data.naflex_collate([("f", fast), ("e", exact)], ip)
    assert torch.equal(mixed["pixel_values"], torch.cat([bf["pixel_values"], be["pixel_values"]]))
    # another budget than the one it was drafted for: still the target of the full size
    for M in (16, 100):
        shapes = [data.naflex_collate([("k", im)], ip, max_num_patches=M)["spatial_shapes"] for im in (exact, fast)]
        assert torch.equal(*shapes)


def test_rank_slices_are_disjoint_and_cover():
    for n in (0, 1, 7, 10):
        for w in (1, 2, 3):
            parts = [list(data.rank_slice(n, r, w)) for r in range(w)]
            assert sorted(functools.reduce(operator.iadd, parts, [])) == list(range(n))
            assert data.shard_for_rank(list("abcdefghij")[:n], 0, w) == [list("abcdefghij")[i] for i in parts[0]]
    with pytest.raises(ValueError, match="rank"):
        data.rank_slice(3, 2, 2)


def test_token_batches_never_exceed_budget_and_cover_once():
    rnd = random.Random(0)
    for T in (16, 50, 256):
        lens = [rnd.randint(1, 16) for _ in range(200)]
        batches = data.pack_by_tokens(lens, T)
        assert [i for b in batches for i in b] == list(range(200))
        assert all(sum(lens[i] for i in b) <= T for b in batches)
        # greedy: adding the next batch's first item would have overflowed
        assert all(sum(lens[i] for i in b) + lens[n[0]] > T for b, n in itertools.pairwise(batches))
    assert data.num_patches(480, 640, 16, 256) == 252
    with pytest.raises(ValueError, match="tokens_per_batch"):
        data.pack_by_tokens([5, 20], 16)
    with pytest.raises(ValueError, match="tokens_per_batch"):
        data.pack_by_tokens([5], 0)


def _stream_folder(tmp_path):
    """Seven PNGs of different sizes; 3.png, 4.png and 5.png are not images (unit 1 of three-input units)."""
    for i in range(7):
        if i in (3, 4, 5):
            (tmp_path / f"{i}.png").write_text("not an image")
        else:
            _save(tmp_path / f"{i}.png", 8 + 2 * i, 12, seed=i)
    return data.open_source(tmp_path)


def _summary(items):
    return [
        (it["unit"], it["last"], it["n_inputs"], [e[0] for e in it["errors"]], [b["keys"] for b in it["batches"]])
        for it in items
    ]


def test_stream_units_items_errors_and_batches(tmp_path):
    """plan_units cuts a source into units; NaFlexStream yields one item per chunk, in order, bad files as errors
    of their item, every unit closed by one last item (also a unit whose every image is bad), and each batch is
    naflex_collate of the decoded images, with its valid-token count."""
    from siglip2.processing.image_processing import Siglip2ImageProcessor

    src = _stream_folder(tmp_path)
    units = data.plan_units(src, 3)
    assert units == [data.Unit(0, 0, 3), data.Unit(1, 3, 6), data.Unit(2, 6, 7)] and units[1].name == "00001"
    ip = Siglip2ImageProcessor(patch_size=4, max_num_patches=16)
    items = list(data.NaFlexStream(src, units, ip, max_num_patches=16, batch_size=2))
    assert _summary(items) == [
        (0, False, 2, [], [["0.png", "1.png"]]),
        (0, True, 1, [], [["2.png"]]),
        (1, False, 2, ["3.png", "4.png"], []),
        (1, True, 1, ["5.png"], []),
        (2, True, 1, [], [["6.png"]]),
    ]
    first = items[0]["batches"][0]
    want = data.naflex_collate([(k, data.decode_image(src[i])) for i, k in enumerate(first["keys"])], ip)
    assert torch.equal(first["pixel_values"], want["pixel_values"]) and first["num_tokens"] == int(
        want["pixel_attention_mask"].sum()
    )
    for kw in ({}, {"batch_size": 2, "tokens_per_batch": 16}):
        with pytest.raises(ValueError, match="batch_size / tokens_per_batch"):
            data.NaFlexStream(src, units, ip, max_num_patches=16, **kw)


def test_stream_through_a_loader_worker_and_the_prefetcher(tmp_path):
    """The stream's DataLoader (one worker) yields the items the stream yields in-process; DevicePrefetcher
    flattens them into StreamBatch(item, batch, first, last), on CPU without copies: an item without batches comes
    once with batch None, an item with several batches marks its first and its last."""
    from siglip2.processing.image_processing import Siglip2ImageProcessor

    src = _stream_folder(tmp_path)
    ip = Siglip2ImageProcessor(patch_size=4, max_num_patches=16)
    stream = data.NaFlexStream(src, data.plan_units(src, 3), ip, max_num_patches=16, tokens_per_batch=32)
    items = list(stream)
    assert _summary(list(stream.loader(num_workers=1))) == _summary(items)
    assert any(len(it["batches"]) > 1 for it in items) and any(not it["batches"] for it in items)
    entries = list(data.DevicePrefetcher(stream.loader(), torch.device("cpu")))
    assert all(isinstance(e, data.StreamBatch) for e in entries)
    want = []
    for it in items:
        n = len(it["batches"])
        want += (
            [(it["unit"], None, True, True)]
            if n == 0
            else [(it["unit"], b["keys"], i == 0, i == n - 1) for i, b in enumerate(it["batches"])]
        )
    assert [(e.item["unit"], e.batch and e.batch["keys"], e.first, e.last) for e in entries] == want
    assert list(torch.utils.data.DataLoader(data.as_iterable_dataset(range(3)), batch_size=None)) == [0, 1, 2]
