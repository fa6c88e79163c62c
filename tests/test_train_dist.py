"""`siglip2 train` under torchrun (2 ranks, gloo, CPU): `pytest tests/test_train_dist.py` (~45 s on 2 cores).

One `torchrun --nproc-per-node 2` launch runs, through the real CLI (`siglip2.__main__.main`, the same code path as
`torchrun -m siglip2 train`), five jobs in one process group, so the ~10 s start-up of two ranks is paid once:
DDP, FSDP2 (`--fsdp`: fully_shard per encoder layer, then the root; it runs on gloo), FSDP2 stopped after 2 of
4 steps and resumed, and FSDP2 with `--precision bf16` (bf16 parameters, fp32 reduction). Against one process (in
this pytest process) with the combined batch:

- the loss curve and grad norms match to fp32 tolerance, and the final parameters too. Each step draws its bucket
  (16 or 32 patches) with a flat token budget, so the global batch is 16 or 8 and the ring loss runs on changing
  shapes;
- the FSDP2 run equals the DDP run, its optimizer state is sharded (both ranks write DCP files), and the resumed
  FSDP2 run is bit-exact against the uninterrupted one;
- the bf16 FSDP2 loss curve is the fp32 one within bf16 rounding, and its checkpoint holds fp32 weights.

Why the first attempt hung: it launched `torchrun --master-port 0`. With the default static rendezvous the workers
get MASTER_PORT=0 and block in init_process_group forever; and `subprocess.run(capture_output=True, timeout=...)`
then hangs too, because after killing torchrun it waits for EOF on pipes the orphaned ranks still hold. Here the
launch uses the c10d rendezvous on `localhost:0` (the agent binds a free port and passes it on), runs in its own
session with its output in a file, and a timeout kills torchrun's group and every rank (torchrun starts each in
a session of its own) and fails with the output.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240
STEPS, LR = 4, 1e-3


def _common(data, tok):
    return [
        "train",
        "--data",
        data,
        "--model",
        "tiny",
        "--tokenizer",
        tok,
        "--kernel-impl",
        "reference",
        "--workers",
        "0",
        "--log-every",
        "1",
        "--lr",
        str(LR),
        "--warmup",
        "1",
        "--max-grad-norm",
        "0.5",
        "--seq-lens",
        "16,32",
        "--steps",
        str(STEPS),
    ]


def _jobs(data, tok, root):
    """(name, argv) of the jobs every rank runs in order; per-rank budget 128 patches (8 or 4 images)."""
    c = [*_common(data, tok), "--tokens-per-batch", "128"]
    return [
        ("ddp", [*c, "--out", f"{root}/ddp"]),
        ("fsdp", [*c, "--fsdp", "--out", f"{root}/fsdp"]),
        ("fsdp_part", [*c, "--fsdp", "--stop-after", "2", "--out", f"{root}/fsdp_resumed"]),
        ("fsdp_resume", [*c, "--fsdp", "--resume", "--out", f"{root}/fsdp_resumed"]),
        ("fsdp_bf16", [*c, "--fsdp", "--precision", "bf16", "--out", f"{root}/fsdp_bf16"]),
    ]


def _worker(data, tok, root):
    """One rank (torchrun runs this file): every job through the CLI, in one process group."""
    from siglip2.__main__ import main

    for name, argv in _jobs(data, tok, root):
        rc = main(argv)
        if rc:
            raise SystemExit(f"rank {os.environ.get('RANK')}: job {name} exited with {rc}")
        print(f"rank {os.environ.get('RANK')}: job {name} done", flush=True)


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
    sys.exit(0)


sys.path.insert(0, os.path.dirname(__file__))
from shapes import make_dataset
from test_tokenization import make_tokenizer_dir


def _torchrun(args, log_path, nproc=2, timeout=TIMEOUT_S):
    """torchrun in its own session, output to a file; on timeout the whole process group is killed and the test
    fails with the output (a hung collective must never hang CI)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "localhost:0",
        *args,
    ]
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            ranks = _descendants(p.pid)  # torchrun starts each rank in a session of its own: collect them first
            os.killpg(p.pid, signal.SIGKILL)
            for pid in ranks:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            p.wait()
            rc = None
    with open(log_path) as f:
        out = f.read()
    if rc is None:
        pytest.fail(f"torchrun did not finish within {timeout} s (killed); output tail:\n{out[-4000:]}")
    assert rc == 0, f"torchrun exited with {rc}; output tail:\n{out[-4000:]}"
    return out


def _descendants(pid):
    """Every live descendant of `pid` (Linux /proc; elsewhere none, and only torchrun's own group is killed)."""
    children = {}
    pids = [d for d in os.listdir("/proc") if d.isdigit()] if os.path.isdir("/proc") else []
    for d in pids:
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def _log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _params(out):
    from safetensors.torch import load_file

    with open(os.path.join(out, "latest")) as f:
        name = f.read().strip()
    return load_file(os.path.join(out, name, "model", "model.safetensors"))


def _assert_params_close(got, ref, what):
    assert got.keys() == ref.keys()
    for k in ref:
        # softmax is invariant to a per-query constant, so the key bias has zero true gradient; AdamW divides its
        # rounding noise by sqrt(v) and moves it by up to ~lr per step in either direction
        atol, rtol = (2 * LR * STEPS, 0.0) if k.endswith("self_attn.k_proj.bias") else (1e-5, 1e-4)
        torch.testing.assert_close(got[k], ref[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{what} {k}: {m}")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_tokenizer_dir(str(root / "tok"), model_type=None)
    return {"data": make_dataset(str(root), 64, seed=0, name="train"), "tok": str(root / "tok")}


@pytest.mark.slow  # torchrun: two ranks, five jobs
def test_ddp_and_fsdp2_match_one_process_and_resume(shapes, tmp_path):
    from siglip2.__main__ import main

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the reference: one process, the combined batch (twice the per-rank budget)
        assert (
            main(
                [
                    *_common(shapes["data"], shapes["tok"]),
                    "--tokens-per-batch",
                    "256",
                    "--out",
                    str(tmp_path / "single"),
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(n)
    out = _torchrun([__file__, shapes["data"], shapes["tok"], str(tmp_path)], tmp_path / "torchrun.log")
    for name, _ in _jobs(shapes["data"], shapes["tok"], tmp_path):
        assert f"rank 1: job {name} done" in out, out[-4000:]
    ref_log, ref = _log(tmp_path / "single"), _params(tmp_path / "single")
    assert [r["global_batch"] for r in ref_log] == [256 // r["max_num_patches"] for r in ref_log]
    assert {r["max_num_patches"] for r in ref_log} == {16, 32}  # both buckets are drawn in these 4 steps
    for mode in ("ddp", "fsdp"):
        log = _log(tmp_path / mode)
        assert [(r["step"], r["global_batch"], r["max_num_patches"]) for r in log] == [
            (r["step"], r["global_batch"], r["max_num_patches"]) for r in ref_log
        ]
        torch.testing.assert_close(
            [r["loss"] for r in log],
            [r["loss"] for r in ref_log],
            rtol=1e-5,
            atol=1e-6,
            msg=lambda m, mode=mode: f"{mode} loss curve: {m}",
        )
        torch.testing.assert_close(
            [r["grad_norm"] for r in log],
            [r["grad_norm"] for r in ref_log],
            rtol=1e-4,
            atol=1e-6,
            msg=lambda m, mode=mode: f"{mode} grad norms: {m}",
        )
        _assert_params_close(_params(tmp_path / mode), ref, mode)
    _assert_params_close(_params(tmp_path / "fsdp"), _params(tmp_path / "ddp"), "fsdp vs ddp")
    state = tmp_path / "fsdp" / (tmp_path / "fsdp" / "latest").read_text().strip() / "state"
    assert len(list(state.glob("*.distcp"))) == 2, sorted(p.name for p in state.iterdir())  # one shard per rank
    full, resumed = _params(tmp_path / "fsdp"), _params(tmp_path / "fsdp_resumed")
    for k in full:
        assert torch.equal(full[k], resumed[k]), f"fsdp resume: {k} differs from the uninterrupted run"
    # FSDP2 with bf16 parameters and fp32 reduction: the fp32 loss curve within bf16 rounding, fp32 weights saved
    bf16 = [r["loss"] for r in _log(tmp_path / "fsdp_bf16")]
    torch.testing.assert_close(bf16, [r["loss"] for r in ref_log], rtol=3e-2, atol=0)
    assert all(v.dtype == torch.float32 for v in _params(tmp_path / "fsdp_bf16").values())
    strip = [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in _log(tmp_path / "fsdp")]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in _log(tmp_path / "fsdp_resumed")]
