"""Reliability (issue 11): crash-safe saves, no stale validation caches, named errors for every bad size, empty and
degenerate inputs, and hypothesis fuzzing of the vision model's inputs against transformers.

The crash-injection loop counts every file operation of a save (open, write, fsync, os.open, replace, remove,
makedirs, safetensors' save_file) and fails the k-th one, for every k, in two modes: "error" (that one operation
fails, as on a full disk, and the save's own cleanup runs) and "crash" (that operation and every later one fail, as
when the process dies). After each, from_pretrained must load the old or the new weights bit-exact, and a later
save must leave a clean directory. Runtime: about 15-25 s on 2 busy cores.
"""

import builtins
import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny import hf_model, our_model, tiny_config_dict

import siglip2.reference as ref
from siglip2 import fast
from siglip2.checkpoints.loading import CheckpointError
from siglip2.models.configuration import Siglip2TextConfig, Siglip2VisionConfig

# every model here comes from tests/tiny.py (one place for tiny configs; parameters perturbed)
SMALL = dict(hidden=32, heads=2, layers=1, intermediate=40)
VISION = tiny_config_dict(**SMALL)["vision_config"]
ATOL = 1e-5  # fp32 parity with transformers, as tests/test_modeling.py


# ----------------------------------------------------------------------------------------------
# 1. Crash-safe save_pretrained
# ----------------------------------------------------------------------------------------------


class _Crash(BaseException):
    """The process dies: not an Exception, so no `except Exception` in the save can swallow it."""


class _Injector:
    """Counts file operations; fails operation number `fail_at` (mode "error") or it and all later ones ("crash")."""

    def __init__(self, monkeypatch, fail_at=None, mode="error"):
        import safetensors.torch

        self.count, self.fail_at, self.mode, self.failed = 0, fail_at, mode, False
        real_open = builtins.open

        def hit(what):
            self.count += 1
            if self.fail_at is not None and (self.count - 1 == self.fail_at or (self.failed and self.mode == "crash")):
                self.failed = True
                if self.mode == "crash":
                    raise _Crash(f"injected crash at {what}")
                raise OSError(errno.ENOSPC, f"injected failure at {what}")

        class File:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                hit("write")
                return self._f.write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

            def __getattr__(self, name):
                return getattr(self._f, name)

        def fake_open(file, mode="r", *a, **k):
            hit(f"open({os.path.basename(str(file))}, {mode})")
            return File(real_open(file, mode, *a, **k))

        def wrap(name, real):
            def f(*a, **k):
                hit(f"{name}({', '.join(os.path.basename(str(x)) for x in a)})")
                return real(*a, **k)

            return f

        real_save = safetensors.torch.save_file

        def fake_save_file(tensors, filename, metadata=None):
            try:
                hit(f"save_file({os.path.basename(str(filename))})")
            except BaseException:
                with real_open(filename, "wb") as f:  # a failure while writing leaves half a file behind
                    f.write(b"\0" * 7)
                raise
            return real_save(tensors, filename, metadata=metadata)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(safetensors.torch, "save_file", fake_save_file)
        for name in ("replace", "rename", "remove", "unlink", "fsync", "open", "makedirs", "rmdir"):
            monkeypatch.setattr(os, name, wrap(name, getattr(os, name)))


def _model(layers, seed):
    return our_model(ref.Siglip2VisionModel, seed, **dict(SMALL, layers=layers))


def _same(state_a, state_b):
    return set(state_a) == set(state_b) and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


# old -> new: single file (None) or shards of at most 40 KB (3-4 shards); the new model also has another depth
# (other keys, another config), so a mixture of old and new files would not load
TRANSITIONS = {
    "single->single": (None, None),
    "single->sharded": (None, "40KB"),
    "sharded->single": ("40KB", None),
    "sharded->sharded": ("40KB", "40KB"),
}


@pytest.mark.parametrize("mode", ["error", "crash"])
@pytest.mark.parametrize("transition", list(TRANSITIONS))
def test_save_interrupted_at_every_file_operation_loads_old_or_new(tmp_path, monkeypatch, transition, mode):
    old_size, new_size = TRANSITIONS[transition]
    old, new = _model(1, 0), _model(2, 1)

    def kw(size):
        return {} if size is None else {"max_shard_size": size}

    template = tmp_path / "template"
    old.save_pretrained(template, **kw(old_size))
    old_state, new_state = old.state_dict(), new.state_dict()

    with monkeypatch.context() as m:  # count the operations of an uninterrupted save
        probe = tmp_path / "probe"
        shutil.copytree(template, probe)
        inj = _Injector(m)
        new.save_pretrained(probe, **kw(new_size))
        total = inj.count
    assert total > 8
    outcomes = []
    for k in range(total):
        d = tmp_path / f"{mode}-{k}"
        shutil.copytree(template, d)
        with monkeypatch.context() as m:
            _Injector(m, fail_at=k, mode=mode)
            # a failed read of the old index is tolerated (its shards still go): the save then completes
            with contextlib.suppress(OSError, _Crash):
                new.save_pretrained(d, **kw(new_size))
        loaded = ref.Siglip2VisionModel.from_pretrained(d).state_dict()
        is_old, is_new = _same(loaded, old_state), _same(loaded, new_state)
        assert is_old or is_new, f"{transition}, {mode} at operation {k}: neither the old nor the new checkpoint"
        outcomes.append("new" if is_new else "old")
        if mode == "error" and is_old:  # the failed save cleaned up after itself
            assert not [f for f in os.listdir(d) if ".tmp-" in f or f.startswith(".save-journal")], os.listdir(d)
        if k % 4 == 0 or k == total - 1:  # the next save recovers and leaves only the new set
            new.save_pretrained(d, **kw(new_size))
            assert _same(ref.Siglip2VisionModel.from_pretrained(d).state_dict(), new_state)
            left = sorted(os.listdir(d))
            assert not [f for f in left if ".tmp-" in f or f.startswith(".save-journal")], left
            assert ("model.safetensors" in left) == (new_size is None), left
    # the loop spans the commit point: early failures keep the old checkpoint, late ones the new
    assert outcomes[0] == "old" and outcomes[-1] == "new", outcomes


def test_unserializable_config_fails_before_touching_the_directory(tmp_path):
    m = _model(1, 0)
    m.save_pretrained(tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    m.config.extra["callback"] = object()
    with pytest.raises(TypeError, match="config field callback"):
        m.save_pretrained(tmp_path, max_shard_size="6KB")
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before


def test_torch_dtype_in_config_and_saved_dtype_recorded(tmp_path):
    import transformers

    m = _model(1, 0).to(torch.bfloat16)
    m.config.dtype = torch.float32  # transformers writes this as "float32"; so must we
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"  # the saved weights' dtype, as transformers 5 records it
    assert ref.Siglip2VisionModel.from_pretrained(tmp_path, dtype="auto").dtype == torch.bfloat16
    assert ref.Siglip2VisionModel.from_pretrained(tmp_path, dtype="float16").dtype == torch.float16
    assert ref.Siglip2VisionModel.from_pretrained(tmp_path, dtype="torch.float32").dtype == torch.float32
    assert ref.Siglip2VisionModel.from_pretrained(tmp_path).dtype == torch.bfloat16
    theirs = transformers.Siglip2VisionModel.from_pretrained(tmp_path, dtype="auto")
    assert theirs.dtype == torch.bfloat16
    for bad in ("fp32", "int8"):
        with pytest.raises(ValueError, match=f"dtype: expected None, 'auto'.*got '{bad}'"):
            ref.Siglip2VisionModel.from_pretrained(tmp_path, dtype=bad)
    with pytest.raises(ValueError, match="dtype: expected"):
        ref.Siglip2VisionModel.from_pretrained(tmp_path, dtype=torch.int64)


@pytest.mark.parametrize(
    "index, match",
    [
        ({"weight_map": {"embeddings.patch_embedding.weight": "../outside.safetensors"}}, "points outside"),
        ({"weight_map": {"embeddings.patch_embedding.weight": "/etc/passwd"}}, "points outside"),
        ([{"weight_map": {}}], r"model.safetensors.index.json: not a valid safetensors index.*got list"),
        ({"metadata": {}}, "not a valid safetensors index"),
        ({"weight_map": {"embeddings.patch_embedding.weight": 3}}, "points outside"),
    ],
)
def test_bad_shard_index_is_refused(tmp_path, index, match):
    _model(1, 0).save_pretrained(tmp_path / "ck", max_shard_size="6KB")
    (tmp_path / "outside.safetensors").write_bytes(b"")
    (tmp_path / "ck" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=match):
        ref.Siglip2VisionModel.from_pretrained(tmp_path / "ck")


def test_shards_come_from_huggingface_hub_split(tmp_path):
    from huggingface_hub import split_torch_state_dict_into_shards

    m = _model(2, 0)
    m.save_pretrained(tmp_path, max_shard_size="6KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    split = split_torch_state_dict_into_shards(m.state_dict(), max_shard_size=6000)
    groups = sorted(sorted(ks) for ks in split.filename_to_tensors.values())
    ours = {}
    for k, f in index["weight_map"].items():
        ours.setdefault(f, []).append(k)
    assert sorted(sorted(ks) for ks in ours.values()) == groups
    assert index["metadata"]["total_size"] == split.metadata["total_size"]


# ----------------------------------------------------------------------------------------------
# 2. No stale validation caches
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_cu_seqlens_changed_outside_torch_is_rechecked(impl):
    from siglip2.kernels import varlen_attention

    q = torch.randn(4, 2, 8)
    host = np.array([0, 2, 4], dtype=np.int32)
    cu = torch.from_numpy(host)  # shares memory with numpy: numpy writes do not bump torch's version counter
    varlen_attention(q, q, q, cu, cu, 2, 2, impl=impl)
    host[:] = [0, 1, 4]
    with pytest.raises(ValueError, match=r"max_seqlen_q must be >= the longest sequence in cu_seqlens_q \(3\)"):
        varlen_attention(q, q, q, cu, cu, 2, 2, impl=impl)
    with torch.inference_mode(), pytest.raises(ValueError, match="max_seqlen_q"):
        varlen_attention(q, q, q, cu, cu, 2, 2, impl=impl)
    out = varlen_attention(q, q, q, cu, cu, 3, 3, impl=impl)
    want = varlen_attention(q.double(), q.double(), q.double(), cu, cu, 3, 3, impl="reference")
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# 3. Sizes: zero, negative, fractional, overflowing, wrong type -> a named error
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, field, value, exc",
    [
        (Siglip2VisionConfig, "num_patches", 0, ValueError),
        (Siglip2VisionConfig, "patch_size", 0, ValueError),
        (Siglip2VisionConfig, "patch_size", 2.5, TypeError),
        (Siglip2VisionConfig, "hidden_size", 0, ValueError),
        (Siglip2VisionConfig, "num_attention_heads", 0, ValueError),
        (Siglip2VisionConfig, "hidden_size", "32", TypeError),
        (Siglip2VisionConfig, "num_channels", True, TypeError),
        (Siglip2VisionConfig, "layer_norm_eps", 0.0, ValueError),
        (Siglip2TextConfig, "vocab_size", -1, ValueError),
        (Siglip2TextConfig, "max_position_embeddings", 0, ValueError),
        (Siglip2TextConfig, "num_attention_heads", "12", TypeError),
    ],
)
def test_bad_config_fields_named(cls, field, value, exc):
    with pytest.raises(exc, match=rf"{cls.__name__}\.{field} must"):
        cls.from_dict({field: value})


def test_bad_config_json_names_file_and_field(tmp_path):
    _model(1, 0).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["hidden_size"] = "32"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TypeError, match=r"config.json: Siglip2VisionConfig.hidden_size must be an int, got str '32'"):
        ref.Siglip2VisionModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config.json: expected a JSON object"):
        ref.Siglip2VisionModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"max_num_patches": 0}, ValueError, "max_num_patches must be an int >= 1, got 0"),
        ({"patch_size": 0}, ValueError, "patch_size must be an int >= 1, got 0"),
        ({"max_num_patches": 2.5}, TypeError, "max_num_patches must be a positive int, got float 2.5"),
        ({"patch_size": -4}, ValueError, "patch_size"),
        ({"max_num_patches": True}, TypeError, "max_num_patches"),
    ],
)
def test_processor_sizes(kw, exc, match):
    from siglip2.processing.image_processing import Siglip2ImageProcessor

    img = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(exc, match=match):
        Siglip2ImageProcessor()(img, **kw)
    with pytest.raises(exc, match=match):
        Siglip2ImageProcessor(**kw)  # a config file with these values


def test_fixres_processor_size():
    from siglip2.processing.image_processing import SiglipImageProcessor

    with pytest.raises(ValueError, match=r"size\['height'\] must be an int >= 1, got 0"):
        SiglipImageProcessor(size={"height": 0, "width": 4})


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"max_num_patches": 0}, ValueError, "max_num_patches must be an int in \\[1, 4096\\]"),
        ({"max_num_patches": 100_000}, ValueError, "max_num_patches must be an int in \\[1, 4096\\].*got 100000"),
        ({"max_num_patches": 2.5}, TypeError, "max_num_patches"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"template": "{} and {}"}, ValueError, "template: must contain exactly one"),
        ({"template": "a {name}"}, ValueError, r"template: must contain exactly one.*\{name\}"),
        ({"template": "a {0} {1}"}, ValueError, "template"),
        ({"template": "a { photo"}, ValueError, "template: not a valid format string"),
        ({"template": "no field"}, ValueError, "template: must contain exactly one"),
        ({"template": "{:d}"}, ValueError, "template: .* cannot be filled with a label"),
    ],
)
def test_zero_shot_classify_arguments(kw, exc, match):
    from siglip2.pipeline import zero_shot_classify

    with pytest.raises(exc, match=match):  # checked before the model is touched
        zero_shot_classify(np.zeros((8, 8, 3), dtype=np.uint8), ["a", "b"], model=object(), processor=object(), **kw)


def test_int32_spatial_shapes_overflow():
    from tiny import naflex_inputs

    m = _model(1, 0).eval()
    pv, _, _ = naflex_inputs([(4, 4)], 16)
    for impl in ("reference", "triton"):
        m.set_impl(impl, "reference")
        with pytest.raises(ValueError, match=r"spatial_shapes\[0\] = \(65536, 65536\)"):
            m(pv, None, torch.tensor([[65536, 65536]], dtype=torch.int32))


# ----------------------------------------------------------------------------------------------
# 4. Empty and degenerate inputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mod", [ref, fast])
def test_empty_batches_named(mod):
    m = mod.Siglip2VisionModel(Siglip2VisionConfig(**VISION)).eval()
    with pytest.raises(ValueError, match="pixel_values: got a batch of 0 images"):
        m(torch.zeros(0, 16, 12), torch.zeros(0, 16, dtype=torch.int32), torch.zeros(0, 2, dtype=torch.long))
    t = mod.Siglip2TextModel(Siglip2TextConfig(**tiny_config_dict(**SMALL, vocab=50)["text_config"])).eval()
    with pytest.raises(ValueError, match=r"input_ids: sequence length 0 \(shape \(2, 0\)\)"):
        t(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids: got a batch of 0 texts"):
        t(torch.zeros(0, 5, dtype=torch.long))


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_kernels_on_degenerate_inputs(impl):
    from siglip2.kernels import naflex_patch_embed, padded_attention

    q = torch.randn(2, 3, 4, 8, requires_grad=True)
    k = torch.randn(2, 3, 0, 8)
    out = padded_attention(q, k, k, torch.zeros(2, 0, dtype=torch.bool), impl=impl)
    assert out.shape == q.shape and not out.any()  # no keys: zeros, as varlen_attention's empty sequences
    out.sum().backward()
    assert q.grad is not None and not q.grad.any()
    w = torch.randn(8, 12, requires_grad=True)
    b, pos = torch.randn(8), torch.randn(16, 8)
    no_images = torch.zeros(0, 5, 12)
    assert naflex_patch_embed(no_images, torch.zeros(0, 2, dtype=torch.long), w, b, pos, impl=impl).shape == (0, 5, 8)
    packed = naflex_patch_embed(
        no_images,
        torch.zeros(0, 2, dtype=torch.int32),
        w,
        b,
        pos,
        cu_seqlens=torch.zeros(1, dtype=torch.int32),
        impl=impl,
    )
    assert packed.shape == (0, 8)
    packed.sum().backward()
    assert w.grad is not None and not w.grad.any()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from test_tokenization import make_tokenizer_dir

    d = tmp_path_factory.mktemp("tok")
    make_tokenizer_dir(d)
    return d


def test_tokenizer_empty_list_and_bad_max_length(tok_dir):
    from siglip2.processing.tokenization import Siglip2Tokenizer

    tok = Siglip2Tokenizer.from_pretrained(tok_dir)
    assert tok([], padding="max_length", max_length=64)["input_ids"].shape == (0, 64)
    assert tok([], padding=True)["input_ids"].shape == (0, 0)
    assert tok([], padding="max_length", max_length=7, return_tensors="np")["input_ids"].shape == (0, 7)
    for bad, exc in ((0, ValueError), (2.5, TypeError), (-3, ValueError)):
        with pytest.raises(exc, match="max_length"):
            tok(["a cat"], padding="max_length", max_length=bad)


@pytest.mark.parametrize(
    "content, match",
    [
        ("[1, 2]", "tokenizer.json: expected a JSON object, got a list"),
        (json.dumps({"model": {"type": "BPE", "merges": []}}), "tokenizer.json: the BPE model has no vocab"),
        (json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": 5}}), "tokenizer.json.*malformed"),
        (
            json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}}, "added_tokens": [{"id": 1}]}),
            "tokenizer.json.*malformed",
        ),
    ],
)
def test_malformed_tokenizer_json_names_the_file(tmp_path, tok_dir, content, match):
    from siglip2.processing.tokenization import Siglip2Tokenizer

    shutil.copytree(tok_dir, tmp_path / "t")
    (tmp_path / "t" / "tokenizer.json").write_text(content)
    with pytest.raises(CheckpointError, match=match):
        Siglip2Tokenizer.from_pretrained(tmp_path / "t")


# ----------------------------------------------------------------------------------------------
# 5. CLI: one-line errors
# ----------------------------------------------------------------------------------------------


def _cli_error(capsys, *argv):
    from siglip2.__main__ import main

    rc = main(list(argv))
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--device", "tpu9"], "--device: unknown device 'tpu9'"),
        (["--device", "cuda"], "--device cuda: "),
        (["--template", "{} and {}"], "--template: must contain exactly one"),
        (["--template", "a {label}"], "--template: must contain exactly one"),
        (["--max-num-patches", "100000"], r"--max-num-patches must be an int in \[1, 4096\]"),
        (["--max-num-patches", "0"], r"--max-num-patches must be an int in \[1, 4096\]"),
    ],
)
def test_cli_bad_arguments_one_line(capsys, tmp_path, argv, match):
    import re

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    img = tmp_path / "x.png"
    import PIL.Image

    PIL.Image.new("RGB", (8, 8)).save(img)
    err = _cli_error(capsys, "classify", str(img), "--labels", "a,b", "--model", str(tmp_path / "none"), *argv)
    assert re.search(match, err), err


def test_cli_embed_directory(capsys, tmp_path):
    empty = tmp_path / "adir"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    err = _cli_error(
        capsys, "embed", str(empty), "--out", str(tmp_path / "o.safetensors"), "--model", str(tmp_path / "none")
    )
    assert "is a directory with no image files" in err


def test_cli_embed_directory_of_images(tmp_path):
    """`siglip2 embed DIR` embeds DIR's images (sorted), not the word DIR: a real subprocess on a tiny checkpoint."""
    import PIL.Image
    from safetensors import safe_open
    from tiny import save_pipeline_checkpoint

    ck = tmp_path / "ck"
    save_pipeline_checkpoint(ck)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name, color in (("b.png", "red"), ("a.jpg", "blue")):
        PIL.Image.new("RGB", (12, 20), color).save(imgs / name)
    (imgs / "readme.txt").write_text("not an image")
    out = tmp_path / "e.safetensors"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "siglip2",
            "embed",
            str(imgs),
            "a cat",
            "--out",
            str(out),
            "--model",
            str(ck),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("image_embeds").shape[0] == 2 and f.get_tensor("text_embeds").shape[0] == 1
    assert json.loads(meta["images"]) == [str(imgs / "a.jpg"), str(imgs / "b.png")]
    assert json.loads(meta["texts"]) == ["a cat"]


# ----------------------------------------------------------------------------------------------
# Hypothesis: the vision model's inputs against transformers; every invalid input names its argument
# ----------------------------------------------------------------------------------------------

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

# defect -> the argument its error must name (None: a valid input, compared with transformers)
DEFECTS = {
    "h_zero": "spatial_shapes",
    "w_negative": "spatial_shapes",
    "too_many_patches": "spatial_shapes",
    "int32_overflow": "spatial_shapes",
    "spatial_float": "spatial_shapes",
    "spatial_rows": "spatial_shapes",
    "spatial_missing": "spatial_shapes",
    "mask_disagrees": "pixel_attention_mask",
    "mask_not_binary": "pixel_attention_mask",
    "mask_shape": "pixel_attention_mask",
    "pixels_int": "pixel_values",
    "pixels_features": "pixel_values",
    "pixels_ndim": "pixel_values",
    "no_images": "pixel_values",
    "pixels_list": "pixel_values",
}


@st.composite
def vision_inputs(draw, defect):
    B, L = draw(st.integers(1, 3)), draw(st.integers(1, 20))
    shapes = []
    for _ in range(B):
        h = draw(st.integers(1, L))
        shapes.append((h, draw(st.integers(1, L // h))))
    return dict(
        shapes=shapes,
        L=L,
        defect=defect,
        seed=draw(st.integers(0, 2**16)),
        pixel_dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])),
        shape_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        mask_dtype=draw(st.sampled_from([None, torch.int32, torch.int64, torch.bool, torch.float32])),
    )


def _build(case):
    """(pixel_values, pixel_attention_mask, spatial_shapes) of a case, with its defect applied."""
    shapes, L, defect = [list(s) for s in case["shapes"]], case["L"], case["defect"]
    B, F = len(shapes), 3 * VISION["patch_size"] ** 2
    g = torch.Generator().manual_seed(case["seed"])
    pv = torch.zeros(B, L, F)
    mask = torch.zeros(B, L, dtype=torch.int64)
    for i, (h, w) in enumerate(shapes):
        pv[i, : h * w] = torch.randn(h * w, F, generator=g)
        mask[i, : h * w] = 1
    mask_dtype = case["mask_dtype"] or (torch.int32 if defect and defect.startswith("mask") else None)
    if defect == "mask_not_binary" and mask_dtype == torch.bool:
        mask_dtype = torch.int32  # a bool mask cannot hold a 2
    if defect == "h_zero":
        shapes[0][0] = 0
    elif defect == "w_negative":
        shapes[-1][1] = -1
    elif defect == "too_many_patches":
        shapes[0] = [L + 1, 1]
    elif defect == "int32_overflow":
        shapes[0] = [65536, 65536]
    elif defect == "mask_disagrees":
        h, w = shapes[0]
        mask[0, h * w - 1] = 0
    elif defect == "mask_not_binary":
        mask = mask * 2
    ss = torch.tensor(shapes, dtype=torch.int32 if defect == "int32_overflow" else case["shape_dtype"])
    pv = pv.to(case["pixel_dtype"])
    mask = None if mask_dtype is None else mask.to(mask_dtype)
    if defect == "mask_shape":
        mask = mask[:, :-1]
    elif defect == "spatial_float":
        ss = ss.float()
    elif defect == "spatial_rows":
        ss = torch.cat([ss, ss[:1]])
    elif defect == "spatial_missing":
        ss = None
    elif defect == "pixels_int":
        pv = pv.long()
    elif defect == "pixels_features":
        pv = pv[..., :-1]
    elif defect == "pixels_ndim":
        pv = pv[None]
    elif defect == "no_images":
        pv, ss = pv[:0], ss[:0]
        mask = None if mask is None else mask[:0]
    elif defect == "pixels_list":
        pv = pv.tolist()
    return pv, mask, ss


@pytest.fixture(scope="module")
def vision_models():
    hf = hf_model("Siglip2VisionModel", **SMALL)
    cfg = hf.config
    padded = ref.Siglip2VisionModel(cfg).eval()
    packed = fast.Siglip2VisionModel(cfg, kernel_impl="reference").eval()  # packed path, reference ops (fast on CPU)
    for m in (padded, packed):
        m.load_state_dict(hf.state_dict())
    return hf, padded, packed


_SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize("defect", [None, *DEFECTS])
def test_fuzz_vision_inputs(vision_models, defect):
    """Valid inputs (40 examples: batch sizes, grids, padding, input/mask/shape dtypes) match transformers on both
    impls; each defect (6 examples each) raises a ValueError/TypeError that names the argument."""

    @settings(max_examples=40 if defect is None else 6, **_SETTINGS)
    @given(case=vision_inputs(defect))
    def check(case):
        event(f"mask dtype: {case['mask_dtype']}")  # shown by --hypothesis-show-statistics
        _check_case(vision_models, case)

    check()


def _check_case(vision_models, case):
    hf, padded, packed = vision_models
    pv, mask, ss = _build(case)
    defect = case["defect"]
    with torch.no_grad():
        if defect is not None:
            for m in (padded, packed):
                with pytest.raises((ValueError, TypeError)) as e:
                    m(pv, mask, ss)
                assert DEFECTS[defect] in str(e.value), (defect, str(e.value))
            return
        want = hf(pv, mask, ss.long())
        for m in (padded, packed):
            got = m(pv, mask, ss)
            torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=ATOL, rtol=0)
            valid = torch.ones(pv.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
            torch.testing.assert_close(got.last_hidden_state[valid], want.last_hidden_state[valid], atol=ATOL, rtol=0)
