"""embed-dataset survives a failure between any two of its writes (`pytest tests/test_embed_crash.py`, ~30 s).

Every file write of a run (run.json, each unit's text keys / text shard / image keys / image shard, errors.jsonl,
manifest.json) goes through `atomic_write_text`, or safetensors' `save_file` into a temp file and its rename. The
test counts those calls in an uninterrupted run, then for every k fails the job right after its k-th write (an
OSError, as a full disk or a lost mount would raise), reruns the same command, and requires the output to be
byte-identical to the uninterrupted run's: no unit lost, no temp file left, every image shard with its text shard,
and the manifest's counts right. Right after each failure, a unit whose image shard (its done marker) exists must
already have all its other files: the write order alone keeps units whole, before any resume-time check repairs
them.
"""

# ruff: noqa: F811  (the fixtures imported from test_embed_dataset are requested by name as parameters)
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_embed_dataset import (  # noqa: F401  (its module fixtures: the tiny checkpoint, the images, kernels)
    _files,
    _main,
    _reference_kernels,
    checkpoint,
    folder,
)

ARGS = ("--device", "cpu", "--num-workers", "0", "--shard-size", "4", "--batch-size", "3", "--image-column", "path")


class _Injected(OSError):
    pass


class _OsWith:
    """The os module, with some functions replaced (for output.py's module global only)."""

    def __init__(self, **funcs):
        self.__dict__.update(funcs)

    def __getattr__(self, name):
        return getattr(os, name)


def _count_writes(monkeypatch, fail_after=None):
    """Wrap the two write functions; with fail_after=k, raise right after the k-th write completed."""
    import safetensors.torch

    from siglip2.embed_dataset import output

    calls = []

    def wrap(fn, what):
        def inner(*args, **kwargs):
            r = fn(*args, **kwargs)
            calls.append((what, os.path.basename(str(args[1] if what in ("save_file", "rename") else args[0]))))
            if fail_after is not None and len(calls) == fail_after:
                raise _Injected(f"injected failure after write {fail_after} ({calls[-1]})")
            return r

        return inner

    monkeypatch.setattr(output, "atomic_write_text", wrap(output.atomic_write_text, "text"))
    monkeypatch.setattr(safetensors.torch, "save_file", wrap(safetensors.torch.save_file, "save_file"))
    # the rename of a shard's temp file is its commit point: a failure can fall right after it, too
    monkeypatch.setattr(output, "os", _OsWith(replace=wrap(os.replace, "rename")))
    return calls


def _run(src, out, checkpoint):
    try:
        return _main(src, "--out", out, "--model", checkpoint, *ARGS)
    except _Injected:
        return "raised"


@pytest.fixture(scope="module")
def clean(tmp_path_factory, checkpoint, folder):
    out = tmp_path_factory.mktemp("clean") / "out"
    with pytest.MonkeyPatch.context() as mp:
        calls = _count_writes(mp)
        assert _run(folder[0] / "captions.csv", out, checkpoint) == 0
    return out, list(calls)


def test_uninterrupted_run_has_a_text_shard_per_image_shard_and_right_counts(clean, folder):
    out, calls = clean
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"] == {"inputs": 10, "images": 10, "texts": 10, "errors": 0, "shards": 3}
    imgs = sorted(p.name for p in out.glob("img-*.safetensors"))
    assert imgs == ["img-00000.safetensors", "img-00001.safetensors", "img-00002.safetensors"]
    for s in m["shards"]:
        assert (out / s["texts"]).exists() and (out / s["text_keys"]).exists() and s["text_rows"] == s["rows"]
        keys = (out / s["image_keys"]).read_text().splitlines()
        assert keys == (out / s["text_keys"]).read_text().splitlines() and len(keys) == s["rows"]
    assert sum(s["rows"] for s in m["shards"]) == 10
    # the injection below must reach every file of every unit, or "every k" checks less than it claims
    written = {name for _, name in calls}
    for i in range(3):
        for kind in ("img", "txt"):
            assert f"{kind}-{i:05d}.keys.txt" in written
            assert any(n.startswith(f"{kind}-{i:05d}.safetensors") for n in written)


def test_failure_after_every_write_then_rerun_is_identical(clean, folder, checkpoint, tmp_path, monkeypatch):
    ref_out, calls = clean
    ref = _files(ref_out)
    n = len(calls)
    assert n >= 1 + 6 * 3 + 2  # run.json; per unit 2 keys files, 2 shards, 2 renames; errors, manifest
    for k in range(1, n):  # after the n-th write the run is complete
        out = tmp_path / f"k{k}"
        with pytest.MonkeyPatch.context() as mp:
            _count_writes(mp, fail_after=k)
            assert _run(folder[0] / "captions.csv", out, checkpoint) != 0, f"write {k} ({calls[k - 1]}) failed"
        # a failure (not a kill) cleans up after itself: no temp file is left for the rerun to ignore
        assert not [p.name for p in out.iterdir() if ".tmp" in p.name], f"failure after write {k} ({calls[k - 1]})"
        # the image shard marks its unit done: once it is there, every other file of the unit must be too
        for img in out.glob("img-*.safetensors"):
            unit = img.name[len("img-") : -len(".safetensors")]
            for name in (f"img-{unit}.keys.txt", f"txt-{unit}.keys.txt", f"txt-{unit}.safetensors"):
                assert (out / name).exists(), f"failure after write {k} ({calls[k - 1]}): {img.name} without {name}"
        assert _run(folder[0] / "captions.csv", out, checkpoint) == 0, f"rerun after a failure at write {k}"
        got = _files(out)
        assert sorted(got) == sorted(ref), f"failure after write {k} ({calls[k - 1]}): files differ"
        for name in ref:
            assert got[name] == ref[name], f"failure after write {k} ({calls[k - 1]}): {name} differs"
