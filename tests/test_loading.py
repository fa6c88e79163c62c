"""Checkpoints: transformers <-> ours round trips, sharding, tower prefixes, strict key reports, clear errors,
atomic saves. Every model comes from tests/tiny.py with its parameters perturbed, so a loader that dropped or
zeroed a bias, or swapped two tensors of one shape, changes a tensor that the bit-exact comparisons read."""

import json
import os

import pytest
import torch
import transformers
from tiny import hf_model, hf_siglip2, our_model, tiny_config_dict

import siglip2.reference as ref
from siglip2.checkpoints.loading import CheckpointError


def _assert_same_tensors(a: dict, b: dict):
    assert set(a) == set(b), f"key sets differ: {sorted(set(a) ^ set(b))[:5]}"
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    hf_siglip2().save_pretrained(d)
    return d


def test_transformers_to_ours(hf_dir):
    ours = ref.Siglip2Model.from_pretrained(hf_dir)
    theirs = transformers.Siglip2Model.from_pretrained(hf_dir)
    _assert_same_tensors(ours.state_dict(), theirs.state_dict())
    assert not ours.training


def test_ours_to_transformers(tmp_path):
    src = our_model(ref.Siglip2Model)
    src.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["Siglip2Model"]
    theirs = transformers.Siglip2Model.from_pretrained(tmp_path)
    _assert_same_tensors(src.state_dict(), theirs.state_dict())
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_sharded_save_and_load(tmp_path):
    src = our_model(ref.Siglip2Model)
    src.save_pretrained(tmp_path, max_shard_size=100_000)
    shards = [p for p in os.listdir(tmp_path) if p.startswith("model-")]
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    assert not (tmp_path / "model.safetensors").exists()
    _assert_same_tensors(src.state_dict(), ref.Siglip2Model.from_pretrained(tmp_path).state_dict())
    _assert_same_tensors(src.state_dict(), transformers.Siglip2Model.from_pretrained(tmp_path).state_dict())


def test_dtype_and_device_arguments(hf_dir):
    m = ref.Siglip2Model.from_pretrained(hf_dir, dtype=torch.bfloat16, device="cpu")
    assert m.dtype == torch.bfloat16 and m.device.type == "cpu"


def test_vision_and_text_towers_from_full_checkpoint(hf_dir):
    full = transformers.Siglip2Model.from_pretrained(hf_dir)
    v = ref.Siglip2VisionModel.from_pretrained(hf_dir)
    t = ref.Siglip2TextModel.from_pretrained(hf_dir)
    _assert_same_tensors(v.state_dict(), full.vision_model.state_dict())
    _assert_same_tensors(t.state_dict(), full.text_model.state_dict())


@pytest.mark.parametrize("prefixed", [False, True])
def test_standalone_tower_with_or_without_prefix(tmp_path, prefixed):
    from safetensors.torch import save_file

    hf = hf_model("Siglip2VisionModel")
    hf.save_pretrained(tmp_path)  # transformers 5 saves without a prefix
    if prefixed:  # transformers 4.x layout
        state = {f"vision_model.{k}": v.contiguous() for k, v in hf.state_dict().items()}
        save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours = ref.Siglip2VisionModel.from_pretrained(tmp_path)
    _assert_same_tensors(ours.state_dict(), hf.state_dict())


def test_wrong_shape_and_unexpected_keys_reported(tmp_path, hf_dir):
    from safetensors.torch import load_file, save_file

    state = load_file(hf_dir / "model.safetensors")
    state["logit_bias"] = torch.zeros(2)
    state["extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(CheckpointError) as e:
        ref.Siglip2Model.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "wrong shape for logit_bias: checkpoint (2,), model (1,)" in msg
    assert "unexpected keys (1): extra.weight" in msg


def test_missing_directory_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ref.Siglip2Model.from_pretrained(tmp_path / "nope")


def test_truncated_safetensors_names_the_file(tmp_path, hf_dir):
    data = (hf_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"model.safetensors.*truncated or corrupt"):
        ref.Siglip2Model.from_pretrained(tmp_path)


def test_no_weights_file(tmp_path, hf_dir):
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"no model.safetensors"):
        ref.Siglip2Model.from_pretrained(tmp_path)


def test_offline_hub_id_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"could not get 'google/siglip2-does-not-exist'.*local directory"):
        ref.Siglip2Model.from_pretrained("google/siglip2-does-not-exist", cache_dir=tmp_path)


def test_save_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact and no stray temp files."""
    import safetensors.torch

    m = our_model(ref.Siglip2Model)
    m.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with torch.no_grad():
        m.logit_bias.fill_(5.0)
    with pytest.raises(KeyboardInterrupt):
        m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_resave_sharded_crash_leaves_previous_checkpoint(tmp_path, monkeypatch):
    """Re-saving a sharded checkpoint that crashes halfway leaves the previous one loadable and unmixed."""
    import safetensors.torch

    a = our_model(ref.Siglip2Model, seed=0)
    a.save_pretrained(tmp_path, max_shard_size="100KB")
    b = our_model(ref.Siglip2Model, seed=1)
    real, calls = safetensors.torch.save_file, []

    def crash_on_third(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        b.save_pretrained(tmp_path, max_shard_size="100KB")
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    _assert_same_tensors(ref.Siglip2Model.from_pretrained(tmp_path).state_dict(), a.state_dict())
    b.save_pretrained(tmp_path, max_shard_size=10**9)  # sharded -> single file: the old shards go away
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    _assert_same_tensors(ref.Siglip2Model.from_pretrained(tmp_path).state_dict(), b.state_dict())


def test_bad_max_shard_size():
    m = our_model(ref.Siglip2Model)
    with pytest.raises(ValueError, match="max_shard_size must be"):
        m.save_pretrained("/tmp/never-written", max_shard_size="lots")


def test_classifier_fine_tuning_from_dual_encoder_checkpoint(hf_dir):
    with pytest.warns(UserWarning, match="classifier.weight, classifier.bias not in the checkpoint"):
        m = ref.Siglip2ForImageClassification.from_pretrained(hf_dir, num_labels=3)
    assert m.classifier.weight.shape == (3, 64) and torch.isfinite(m.classifier.weight).all()
    theirs = transformers.Siglip2Model.from_pretrained(hf_dir)
    _assert_same_tensors(m.vision_model.state_dict(), theirs.vision_model.state_dict())


def test_unknown_from_pretrained_keyword(hf_dir):
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_lables'"):
        ref.Siglip2ForImageClassification.from_pretrained(hf_dir, num_lables=3)


def test_interrupted_save_journal_is_followed_then_completed(tmp_path):
    """A save stopped after its commit (journal written, nothing renamed yet) loads as the new checkpoint, and the
    next config or model save completes it first."""
    import siglip2.checkpoints.saving as saving

    old, new = our_model(ref.Siglip2Model, seed=0), our_model(ref.Siglip2Model, seed=1)
    old.save_pretrained(tmp_path)
    real = saving.finish_pending_save
    calls = []

    def stop_after_commit(directory):  # the first call (before writing) runs; the second (the swap) "crashes"
        calls.append(directory)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(directory)

    saving.finish_pending_save = stop_after_commit
    try:
        with pytest.raises(KeyboardInterrupt):
            new.save_pretrained(tmp_path, max_shard_size="100KB")
    finally:
        saving.finish_pending_save = real
    assert (tmp_path / ".save-journal.json").exists() and (tmp_path / "model.safetensors").exists()
    _assert_same_tensors(ref.Siglip2Model.from_pretrained(tmp_path).state_dict(), new.state_dict())
    new.config.save_pretrained(tmp_path)  # completes the interrupted save before writing config.json
    assert not (tmp_path / ".save-journal.json").exists() and not (tmp_path / "model.safetensors").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    _assert_same_tensors(ref.Siglip2Model.from_pretrained(tmp_path).state_dict(), new.state_dict())
    _assert_same_tensors(transformers.Siglip2Model.from_pretrained(tmp_path).state_dict(), new.state_dict())


def test_index_that_is_a_list_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config_dict() | {"model_type": "siglip2"}))
    (tmp_path / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: not a valid safetensors index"):
        ref.Siglip2Model.from_pretrained(tmp_path)
