"""The one timing method of the project: median wall time, peak CUDA memory, and the environment header.

`bench/common.py` re-exports these for the benchmarks (bench/run.py) and `siglip2 profile` imports them from here,
so the profiler and the benchmarks measure the same way:

- CUDA: `triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")` (it warms up for 25 ms, repeats for
  100 ms and flushes L2 between repetitions); `warmup`/`rep` are not used there.
- CPU: `warmup` calls, then the median of `rep` `time.perf_counter` timings.
- Peak memory: `torch.cuda.max_memory_allocated` during one call, above what was allocated before it (CUDA only).
"""

from __future__ import annotations

import datetime
import importlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def environment() -> dict[str, Any]:
    """date, versions (torch, python, triton, transformers, siglip2) and the device, for every results file."""
    env: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for mod in ("triton", "transformers", "siglip2"):
        try:
            env[mod] = importlib.import_module(mod).__version__
        except Exception:
            env[mod] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(
            device=p.name, sm=f"{p.major}{p.minor}", cuda=torch.version.cuda, mem_gb=round(p.total_memory / 2**30, 1)
        )
    else:
        env.update(device=f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    return env


def bench_ms(fn: Callable[[], object], *, warmup: int = 3, rep: int = 20, device: str = "cuda") -> float:
    """Median wall time of `fn()` in milliseconds.

    CUDA: triton.testing.do_bench (25 ms warm-up, 100 ms of repetitions, L2 flushed between them; `warmup`/`rep`
    are not used there). CPU: `warmup` calls, then the median of `rep` perf_counter timings.
    """
    if str(device).startswith("cuda"):
        from triton.testing import do_bench

        ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
        if not isinstance(ms, (int, float)):  # typed as float | list | None: a list only for `quantiles=`
            raise TypeError(f"bench_ms: triton.testing.do_bench returned {type(ms).__name__}, expected a float")
        return float(ms)
    if rep < 1 or warmup < 0:
        raise ValueError(f"bench_ms: expected rep >= 1 and warmup >= 0, got rep={rep}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_mem_mb(fn: Callable[[], object], device: str = "cuda") -> float | None:
    """Peak allocated CUDA memory of one call of `fn`, above what was allocated before it (MB); None off CUDA."""
    if not str(device).startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20
