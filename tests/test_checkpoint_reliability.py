"""Checkpoint I/O under bad files and concurrent writers (issue 26): config files with missing or mistyped fields,
two processes saving into one directory, temp files of killed writers, a tensor stored in two shards."""

import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import our_model

import siglip2.reference as ref
from siglip2.checkpoints.loading import CheckpointError, atomic_write_text, read_model_type, read_state_dict
from siglip2.checkpoints.saving import SaveInProgressError, save_lock, write_checkpoint
from siglip2.models.configuration import Siglip2Config
from siglip2.processing.image_processing import Siglip2ImageProcessor, image_processor_from_pretrained

# ---------------------------------------------------------------------------------------------- config files


@pytest.mark.parametrize("text", ["{}", '{"hidden_size": 8}', '{"model_type": null}', '{"model_type": 3}'])
def test_config_json_without_model_type_names_the_file_and_the_field(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    for call in (lambda: read_model_type(str(tmp_path)), lambda: Siglip2Config.from_pretrained(tmp_path)):
        with pytest.raises(CheckpointError) as e:
            call()
        msg = str(e.value)
        assert str(tmp_path / "config.json") in msg and "model_type" in msg and "no config.json" not in msg


def test_missing_config_json_still_says_so(tmp_path):
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        read_model_type(str(tmp_path))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("resample", None, "PIL filter code"),
        ("resample", "bilinear", "PIL filter code"),
        ("resample", 2.5, "PIL filter code"),
        ("resample", 9, "PIL filter code"),
        ("image_mean", None, "3 numbers"),
        ("image_mean", [0.5, 0.5], "3 numbers"),
        ("image_mean", [0.5, "x", 0.5], "finite number"),
        ("image_std", [0.5, None, 0.5], "finite number"),
        ("rescale_factor", "x", "finite number"),
        ("rescale_factor", None, "finite number"),
        ("rescale_factor", 0, "> 0"),
        ("do_normalize", "no", "true or false"),
        ("do_resize", None, "true or false"),
        ("patch_size", 0, ">= 1"),
        ("max_num_patches", "256", "positive int"),
    ],
)
def test_bad_preprocessor_field_is_one_checkpoint_error(tmp_path, field, value, expected):
    cfg = Siglip2ImageProcessor().to_dict()
    cfg[field] = value
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(cfg))
    for call in (
        lambda: Siglip2ImageProcessor.from_pretrained(tmp_path),
        lambda: image_processor_from_pretrained(tmp_path),
    ):
        with pytest.raises(CheckpointError) as e:
            call()
        msg = str(e.value)
        came = repr(value) if not isinstance(value, list) or len(value) != 3 else repr(value[1])
        assert str(path) in msg and field in msg and expected in msg and "got" in msg and came in msg, msg


def test_processor_keywords_checked_by_the_same_function():
    with pytest.raises(TypeError, match="rescale_factor"):
        Siglip2ImageProcessor(rescale_factor="x")
    p = Siglip2ImageProcessor(image_mean=0.25, image_std=torch.tensor([0.5, 0.5, 0.5]))
    assert p.image_mean == [0.25] * 3 and p.image_std == [0.5] * 3


# ---------------------------------------------------------------------------------------------- concurrent saves


def _save_loop(directory: str, seed: int, n: int, queue) -> None:
    torch.manual_seed(seed)
    model = our_model(ref.Siglip2VisionModel)
    results = []
    for i in range(n):
        try:
            model.save_pretrained(directory, max_shard_size=20_000 if i % 2 else 10**9)
            results.append("ok")
        except SaveInProgressError as e:
            results.append("busy" if "another save is in progress" in str(e) else f"bad message: {e}")
        except Exception as e:  # any other failure is reported
            results.append(f"{type(e).__name__}: {e}")
    queue.put(results)


def test_two_processes_saving_into_one_directory(tmp_path):
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each, as two separate jobs would be
    queue = ctx.Queue()
    procs = [ctx.Process(target=_save_loop, args=(str(tmp_path), seed, 6, queue)) for seed in (0, 1)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    flat = [r for rs in results for r in rs]
    assert all(r in ("ok", "busy") for r in flat), flat
    assert "ok" in flat
    ref.Siglip2VisionModel.from_pretrained(tmp_path)  # what is left loads
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n or n == ".save-journal.json" or n == ".save.lock"]


def test_save_lock_refuses_a_second_holder_and_is_released(tmp_path):
    with save_lock(str(tmp_path)):
        with pytest.raises(SaveInProgressError, match="another save is in progress"):
            write_checkpoint(tmp_path, {"w": torch.zeros(2)}, "{}")
        with pytest.raises(SaveInProgressError), save_lock(str(tmp_path)):
            pass
    write_checkpoint(tmp_path, {"w": torch.zeros(2)}, "{}")  # released: the next save goes through
    assert torch.equal(read_state_dict(str(tmp_path))["w"], torch.zeros(2))


def test_killed_lock_holder_leaves_no_stale_lock(tmp_path):
    code = (
        "import os, sys\n"
        "from siglip2.checkpoints.saving import save_lock\n"
        "with save_lock(sys.argv[1]):\n"
        "    os._exit(9)\n"  # killed while holding: no cleanup runs
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False, timeout=60)
    write_checkpoint(tmp_path, {"w": torch.ones(2)}, "{}")
    assert torch.equal(read_state_dict(str(tmp_path))["w"], torch.ones(2))


# ---------------------------------------------------------------------------------------------- stale temp files


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temp_files_of_killed_writers_are_removed(tmp_path):
    dead = _dead_pid()
    for name in ("preprocessor_config.json", "config.json", "model.safetensors"):
        (tmp_path / f"{name}.tmp-{dead}").write_text("half")
    live = tmp_path / f"preprocessor_config.json.tmp-{os.getppid()}"  # a live process's: never touched
    live.write_text("in flight")
    user = tmp_path / "notes.txt.tmp-1"
    user.write_text("not ours")
    atomic_write_text(str(tmp_path / "preprocessor_config.json"), "{}")
    assert not (tmp_path / f"preprocessor_config.json.tmp-{dead}").exists() and live.exists() and user.exists()
    write_checkpoint(tmp_path, {"w": torch.ones(2)}, "{}")  # under the lock: every checkpoint temp file is stale
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["config.json", "model.safetensors", "preprocessor_config.json", live.name, user.name]
    )


# ---------------------------------------------------------------------------------------------- duplicate tensors


def _two_shards(tmp_path, b_value):
    save_file({"a": torch.ones(2), "b": torch.zeros(2)}, tmp_path / "s1.safetensors")
    save_file({"b": b_value, "c": torch.ones(3)}, tmp_path / "s2.safetensors")
    index = {"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))


def test_tensor_in_two_shards_with_different_values_is_refused(tmp_path):
    _two_shards(tmp_path, torch.full((2,), 7.0))
    with pytest.raises(CheckpointError) as e:
        read_state_dict(str(tmp_path))
    msg = str(e.value)
    assert "'b'" in msg and "s1.safetensors" in msg and "s2.safetensors" in msg


def test_tensor_in_two_shards_with_equal_values_loads(tmp_path):
    # harmless, and what transformers loads too (it never checks): kept loadable
    _two_shards(tmp_path, torch.zeros(2))
    state = read_state_dict(str(tmp_path))
    assert set(state) == {"a", "b", "c"} and torch.equal(state["b"], load_file(tmp_path / "s1.safetensors")["b"])


def test_save_into_a_file_path_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("mine")
    with pytest.raises(CheckpointError, match="save_directory: expected a directory"):
        write_checkpoint(f, {"w": torch.zeros(1)}, "{}")
    assert f.read_text() == "mine"


def test_hub_style_preprocessor_config_loads(tmp_path):
    cfg = dict(Siglip2ImageProcessor().to_dict(), do_convert_rgb=None, size=None)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    assert image_processor_from_pretrained(tmp_path).max_num_patches == 256
