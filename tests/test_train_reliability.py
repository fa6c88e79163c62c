"""`siglip2 train` refuses what would lose a run's data or train garbage (issue 26), through the command line in
process (`siglip2.__main__.main`): a used --out without --resume, resume without `latest`, a diverging run, changed
arguments on resume, a batch larger than the data, a tar without images, oversized --seq-lens, bad --device (train
and embed-dataset), damaged checkpoints, unsupported --report-to, worker errors, Ctrl-C and out-of-range numbers.
Every failure is one line on stderr and exit status 1 (130 for Ctrl-C), and nothing saved before is lost."""

import os
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from shapes import make_dataset
from test_tokenization import make_tokenizer_dir

from siglip2.__main__ import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    make_tokenizer_dir(str(root / "tok"), model_type=None)
    return {
        "csv": make_dataset(str(root), 12, seed=0, name="train"),
        "three": make_dataset(str(root), 3, seed=1, name="three"),
        "one": make_dataset(str(root), 1, seed=2, name="one"),
        "tok": str(root / "tok"),
        "root": root,
    }


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _args(d, out, *extra, **kw):
    base = {
        "--data": d["csv"],
        "--model": "tiny",
        "--tokenizer": d["tok"],
        "--out": str(out),
        "--steps": "2",
        "--batch-size": "4",
        "--seq-lens": "16",
        "--workers": "0",
        "--kernel-impl": "reference",
        "--log-every": "1",
    }
    base.update({("--" + k.replace("_", "-")): str(v) for k, v in kw.items()})
    return ["train", *[x for kv in base.items() for x in kv], *extra]


def _fails(capsys, argv, *needles, rc=1):
    capsys.readouterr()
    assert main(argv) == rc
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(("siglip2: ", "siglip2 train: interrupted"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _finite_checkpoints(out):
    from safetensors.torch import load_file

    names = sorted(d for d in os.listdir(out) if d.startswith("checkpoint-"))
    for d in names:
        weights = load_file(os.path.join(out, d, "model", "model.safetensors"))
        assert all(torch.isfinite(v).all() for v in weights.values()), d
    return names


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A finished 2-step run, checkpointed at both steps: copy it before changing anything."""
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(_args(data, out, save_every=1)) == 0
    return out


def test_used_out_is_refused_and_kept(data, run, tmp_path, capsys):
    out = tmp_path / "o"
    shutil.copytree(run, out)
    before = {n: os.path.getmtime(out / n) for n in os.listdir(out)}
    _fails(capsys, _args(data, out, save_every=1), "--resume", "new --out")
    assert {n: os.path.getmtime(out / n) for n in os.listdir(out)} == before  # log and checkpoints untouched


def test_resume_without_latest_uses_newest_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(_args(data, out, steps=3, stop_after=2, save_every=1, keep_last=0)) == 0
    os.remove(out / "latest")  # a crash between renaming checkpoint-2 into place and writing latest
    _fails(capsys, _args(data, out, "--resume", steps=3, stop_after=1), "--stop-after", "already at step 2")
    assert main(_args(data, out, "--resume", steps=3, save_every=1, keep_last=0)) == 0
    assert "checkpoint-00000002, the newest complete checkpoint" in capsys.readouterr().err
    assert _finite_checkpoints(out) == [f"checkpoint-{i:08d}" for i in (1, 2, 3)]
    import json

    with open(out / "log.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]  # step 3 continued, steps 1-2 not redone


def test_divergence_stops_before_saving(data, tmp_path, capsys):
    out = tmp_path / "o"
    line = _fails(capsys, _args(data, out, "--lr", "1e30", steps=4, save_every=1, keep_last=1), "diverged", "step ")
    assert "nan" in line or "inf" in line
    saved = _finite_checkpoints(out)  # every checkpoint written is finite; none from the diverged step
    step = int(line.split("step ")[1].split(":")[0])
    assert all(int(d.split("-")[1]) < step for d in saved)


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--lr", "inf"),
        ("--lr", "nan"),
        ("--lr", "0"),
        ("--weight-decay", "nan"),
        ("--weight-decay", "-1"),
        ("--min-lr-ratio", "5"),
        ("--min-lr-ratio", "-0.1"),
        ("--max-grad-norm", "-1"),
        ("--max-grad-norm", "nan"),
        ("--stop-after", "0"),
        ("--keep-last", "-1"),
        ("--batch-size", "0"),
        ("--seq-lens", "100000"),
        ("--seq-lens", "16,4097"),
    ],
)
def test_out_of_range_numbers(data, tmp_path, capsys, flag, value):
    _fails(capsys, [*_args(data, tmp_path / "o"), flag, value], flag)
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("epochs", ["0", "-1", "nan", "inf", "0.01", "1e12"])  # 0.01 x 12 rows: no sample
def test_epochs_that_train_nothing(data, tmp_path, capsys, epochs):
    argv = _args(data, tmp_path / "o")
    i = argv.index("--steps")
    argv[i : i + 2] = ["--epochs", epochs]
    _fails(capsys, argv, "--epochs")


@pytest.mark.parametrize(
    "change",
    [
        ("--lr", "1e-3"),
        ("--seed", "1"),
        ("--steps", "5"),
        ("--batch-size", "2"),
        ("--seq-lens", "16,32"),
        ("--data", "three"),
    ],
)
def test_resume_with_changed_arguments_is_refused(data, run, tmp_path, capsys, change):
    out = tmp_path / "o"
    shutil.copytree(run, out)
    flag, value = change
    value = data.get(value, value)
    argv = _args(data, out, "--resume", save_every=1)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    _fails(capsys, argv, "--resume", flag)
    # the arguments that may change do not stop a resume (here: nothing left to do, the run is complete)
    assert main(_args(data, out, "--resume", "--stop-after", "2", save_every=1, log_every=2, workers=1)) == 0


def test_batch_larger_than_data(data, tmp_path, capsys):
    _fails(capsys, _args(data, tmp_path / "a", data=data["three"], batch_size=8), "--batch-size 8", "3 rows")
    _fails(capsys, _args(data, tmp_path / "b", data=data["one"], batch_size=1), "1 row", "at least 2")
    argv = _args(data, tmp_path / "c", data=data["three"])
    i = argv.index("--batch-size")
    argv[i : i + 2] = ["--tokens-per-batch", "64"]  # 4 samples of 16 patches > 3 rows
    _fails(capsys, argv, "--tokens-per-batch", "3 rows")


@pytest.mark.parametrize("workers", ["0", "1"])
def test_tar_without_images_fails_in_one_line(data, tmp_path, capsys, workers):
    import tarfile

    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w") as t:
        for i in range(3):
            p = tmp_path / f"{i}.txt"
            p.write_text("a caption")
            t.add(p, arcname=f"s{i}.txt")
    line = _fails(capsys, _args(data, tmp_path / "o", data=str(tar), workers=workers), "--data", "t.tar")
    assert len(line) < 400, line  # a worker's traceback is not flattened into the line


@pytest.mark.parametrize("device", ["meta", "tpu", "nonsense", "cuda", "cuda:0", "mps"])
def test_bad_device_train_and_embed_dataset(data, tmp_path, capsys, device):
    if device.startswith("cuda") and torch.cuda.is_available():
        device = "cuda:99"
    if device == "mps" and hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    _fails(capsys, [*_args(data, tmp_path / "o"), "--device", device], "--device")
    img_dir = os.path.join(data["root"], "three")
    _fails(
        capsys,
        ["embed-dataset", img_dir, "--out", str(tmp_path / "e"), "--model", "./no/such/model", "--device", device],
        "--device",
    )


def _damage(out, how):
    ckpt = out / "checkpoint-00000002"
    if how == "no state":
        shutil.rmtree(ckpt / "state")
    elif how == "bad metadata":
        (ckpt / "state" / ".metadata").write_bytes(b"garbage")
    elif how == "truncated distcp":
        for f in (ckpt / "state").glob("*.distcp"):
            f.write_bytes(f.read_bytes()[:100])
    elif how == "bad train_args":
        (ckpt / "train_args.json").write_text("[1, 2")
    else:
        (out / "latest").write_text({"empty latest": "", "dotdot latest": "..", "absolute latest": "/etc"}[how])


@pytest.mark.parametrize(
    "how,names",
    [
        ("no state", "state/.metadata"),
        ("bad metadata", "checkpoint-00000002/state"),
        ("truncated distcp", "checkpoint-00000002/state"),
        ("bad train_args", "train_args.json"),
        ("empty latest", "latest"),
        ("dotdot latest", "latest"),
        ("absolute latest", "latest"),
    ],
)
def test_damaged_checkpoint_is_named(data, run, tmp_path, capsys, how, names):
    out = tmp_path / "o"
    shutil.copytree(run, out)
    _damage(out, how)
    line = _fails(capsys, _args(data, out, "--resume", save_every=1), "--resume", names)
    assert "cannot load model" not in line  # not blamed on --model
    assert os.path.isdir(out / "checkpoint-00000001")  # nothing was deleted


def test_report_to(data, tmp_path, capsys, monkeypatch):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # argparse: one usage line, exit 2
        main([*_args(data, tmp_path / "o"), "--report-to", "wandb"])
    assert e.value.code == 2 and "wandb" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    _fails(capsys, [*_args(data, tmp_path / "o"), "--report-to", "tensorboard"], "--report-to", "not installed")
    assert not os.path.exists(tmp_path / "o")


def test_ctrl_c_says_where_to_resume(data, tmp_path, capsys, monkeypatch):
    from siglip2.train import data as D

    orig = D.Collate.__call__

    def interrupt(self, items):
        if items[0][2][0] == 1:  # the second step's batch: after checkpoint-1 was saved
            raise KeyboardInterrupt
        return orig(self, items)

    monkeypatch.setattr(D.Collate, "__call__", interrupt)
    out = tmp_path / "o"
    _fails(capsys, _args(data, out, save_every=1), "interrupted at step 1", "checkpoint-00000001", "--resume", rc=130)
    monkeypatch.setattr(D.Collate, "__call__", orig)
    assert main(_args(data, out, "--resume", save_every=1)) == 0
