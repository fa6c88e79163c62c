"""bench/run.py fails loudly: a benchmark that does not import or raises makes the exit status 1, after a summary
that names it and why; its row says so in the results (issue 24: a failed benchmark used to exit 0)."""

import os
import sys
import types

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))


@pytest.fixture
def run_module(monkeypatch):
    import run

    monkeypatch.setattr(run.common, "measured_copy_gbps", lambda device: 0.0)  # the header's copy probe: not tested
    return run


def _broken(monkeypatch, run, how):
    mod = types.ModuleType("bench_broken")
    mod.__doc__ = "A benchmark that breaks."

    def fail(args):
        raise RuntimeError("the kernel exploded")

    mod.run = fail  # type: ignore[attr-defined]
    if how == "raises":
        monkeypatch.setitem(sys.modules, "bench_broken", mod)
        monkeypatch.setitem(run.OPS, "loss", "bench_broken")
    else:
        monkeypatch.setitem(run.OPS, "loss", "bench_module_that_does_not_exist")


@pytest.mark.parametrize("how", ["raises", "does-not-import"])
def test_failed_benchmark_exits_nonzero_with_summary(run_module, monkeypatch, tmp_path, capsys, how):
    import json

    _broken(monkeypatch, run_module, how)
    status = run_module.main(["--ops", "loss", "--no-plots", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1
    assert "1 of 1 benchmarks FAILED" in err and "loss:" in err
    assert ("the kernel exploded" if how == "raises" else "bench_module_that_does_not_exist") in err
    rows = json.loads((tmp_path / "results.json").read_text())["ops"]["loss"]
    assert rows and rows[0]["note"].startswith("benchmark failed")


def test_skipped_provider_rows_are_listed(run_module, monkeypatch, tmp_path, capsys):
    mod = types.ModuleType("bench_partial")
    mod.__doc__ = "A benchmark with a provider that cannot run here."
    mod.run = lambda args: [  # type: ignore[attr-defined]
        {"case": "c", "provider": "ours", "ms": 1.0},
        {"case": "c", "provider": "theirs", "note": "skipped: their package is not installed"},
    ]
    monkeypatch.setitem(sys.modules, "bench_partial", mod)
    monkeypatch.setitem(run_module.OPS, "loss", "bench_partial")
    assert run_module.main(["--ops", "loss", "--no-plots", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "1 rows skipped" in err and "theirs: skipped: their package is not installed" in err


def test_two_runs_leave_two_complete_folders_and_an_index(run_module, monkeypatch, tmp_path, capsys):
    """Each run writes its own folder (device, date, time, commit) with its provenance, and one index line."""
    import json

    from siglip2.profile.timing import Timing

    mod = types.ModuleType("bench_tiny")
    mod.__doc__ = "A tiny benchmark."
    mod.run = lambda args: [  # type: ignore[attr-defined]
        {"case": "c", "provider": "ours", "ms": Timing([1.0, 1.1, 0.9, 1.0], "test")},
        {"case": "c", "provider": "theirs", "ms": Timing([5.0, 5.2, 4.9, 5.1], "test"), "speedup": 0.2},
    ]
    monkeypatch.setitem(sys.modules, "bench_tiny", mod)
    monkeypatch.setitem(run_module.OPS, "loss", "bench_tiny")
    monkeypatch.setattr(run_module, "RESULTS", str(tmp_path))
    for _ in range(2):
        assert run_module.main(["--ops", "loss", "--no-plots"]) == 0
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(folders) == 2, folders
    for folder in folders:
        doc = json.loads((folder / "results.json").read_text())
        env = doc["env"]
        assert {"commit", "command", "loadavg_at_start", "torch_threads", "time", "device", "torch"} <= set(env)
        assert folder.name.startswith("cpu-" + env["date"])
        (ours, _) = doc["ops"]["loss"]
        assert ours["ms"] == 1.0 and ours["ms_q1"] <= 1.0 <= ours["ms_q3"] and ours["n"] == 4
        assert (folder / "results.md").exists()
    index = (tmp_path / "index.md").read_text().splitlines()
    assert sum(line.startswith("| cpu-") for line in index) == 2


def test_no_cuda_runtime_warning_is_dropped(run_module, monkeypatch, tmp_path, caplog):
    """torch.utils.cpp_extension's "No CUDA runtime is found" (a CUDA torch on a machine without a GPU, once
    torch.compile imports it) stays off the console of a bench run; its other warnings still show."""
    import logging

    mod = types.ModuleType("bench_warns")
    mod.__doc__ = "A benchmark whose provider imports cpp_extension."
    log = logging.getLogger("torch.utils.cpp_extension")

    def run(args):
        log.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        log.warning("another cpp_extension warning")
        return [{"case": "c", "provider": "p", "note": "skipped: nothing timed"}]

    mod.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench_warns", mod)
    monkeypatch.setitem(run_module.OPS, "loss", "bench_warns")
    monkeypatch.setattr(run_module, "RESULTS", str(tmp_path))
    monkeypatch.setattr(log, "filters", [])
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        assert run_module.main(["--ops", "loss", "--no-plots"]) == 0
    seen = [r.getMessage() for r in caplog.records if r.name == "torch.utils.cpp_extension"]
    assert seen == ["another cpp_extension warning"]


def test_environment_under_rocm_names_the_gfx_arch(monkeypatch):
    """On ROCm PyTorch the provenance names the gfx architecture and the HIP version, never an sm_ (gfx942 reports
    a compute capability of 9.4), and an MI300X's peaks are known (a stubbed device: no AMD GPU here)."""
    import common
    import torch

    from siglip2.profile.timing import environment

    props = types.SimpleNamespace(
        name="AMD Instinct MI300X", total_memory=192 * 2**30, major=9, minor=4, gcnArchName="gfx942:sramecc+:xnack-"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.version, "hip", "6.4.43482", raising=False)
    env = environment()
    assert env["arch"] == "gfx942" and env["hip"] == "6.4.43482" and env["device"] == "AMD Instinct MI300X"
    assert "sm" not in env and "cuda" not in env
    assert common.peak_for(env, "bf16_tflops") == 1307.4
