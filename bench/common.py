"""Shared benchmark plumbing: timing, device header, peak memory, result rows.

Every op benchmark (bench/bench_<op>.py) exposes `run(args) -> list[dict]`; bench/run.py collects the rows,
prints one table per op and writes bench/results/<device>-<date>/results.json (+ .md).
Each row carries: op, case, provider, mode, ms (median), and where defined tflops / gbps, pct_peak,
peak_mem_mb and speedup (vs. the op's named baseline, same run).
"""
from __future__ import annotations

import datetime
import platform
import statistics
import time

import torch


def environment() -> dict:
    import importlib

    env = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version()}
    for mod in ("triton", "transformers"):
        try:
            env[mod] = importlib.import_module(mod).__version__
        except Exception:
            env[mod] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(device=p.name, sm=f"{p.major}{p.minor}", cuda=torch.version.cuda, mem_gb=round(p.total_memory / 2**30, 1))
    else:
        env.update(device=f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    return env


def bench_ms(fn, *, warmup: int = 3, rep: int = 20, device: str = "cuda") -> float:
    """Median wall time of `fn()` in milliseconds.

    CUDA: triton.testing.do_bench (25 ms warm-up, 100 ms of repetitions, L2 flushed between them; `warmup`/`rep`
    are not used there). CPU: `warmup` calls, then the median of `rep` perf_counter timings.
    """
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_mem_mb(fn, device: str = "cuda") -> float | None:
    """Peak allocated CUDA memory of one call of `fn`, above what was allocated before it (MB)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# Dense bf16 tensor-core and HBM peaks used for "% of peak" (vendor numbers; the measured copy bandwidth
# is reported separately by bench/run.py so GB/s can be read against what the device actually sustains).
PEAKS = {
    "H100": {"bf16_tflops": 989.0, "fp16_tflops": 989.0, "fp32_tflops": 67.0, "hbm_gbps": 3350.0},
    "H200": {"bf16_tflops": 989.0, "fp16_tflops": 989.0, "fp32_tflops": 67.0, "hbm_gbps": 4800.0},
}


def peak_for(env: dict, key: str) -> float | None:
    name = env.get("device", "")
    for k, v in PEAKS.items():
        if k in name:
            return v[key]
    return None


def measured_copy_gbps(device: str = "cuda", nbytes: int = 1 << 30) -> float | None:
    """Device-to-device copy bandwidth (read + write bytes / time), the practical ceiling for GB/s figures."""
    if device != "cuda":
        return None
    a = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = bench_ms(lambda: b.copy_(a))
    return 2 * a.numel() / (ms * 1e-3) / 1e9
