"""The one timing method of the project: timings with their spread, peak CUDA memory, the environment header.

`bench/common.py` re-exports these for the benchmarks (bench/run.py) and `siglip2 profile` imports them from here,
so the profiler and the benchmarks measure the same way:

- CUDA: `triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="all")`: it warms up for 25 ms, repeats for
  100 ms, times each call with CUDA events and zeroes a 256 MB buffer between calls, so every call starts with a
  cold L2 (fair for the kernels here, whose inputs would not stay in L2 across a real model's layers anyway).
- CPU: warm-up calls until the timings settle (the median of the last 3 within 10% of the 3 before, at most
  `max(warmup, 20)` calls or 2 s: the first calls of a new shape pay for allocation, oneDNN primitive creation and
  the Triton interpreter's tracing), then `time.perf_counter` timings until there are at least `rep` and 0.5 s.
- Each measurement is a `Timing`: a float equal to the median (so arithmetic on it keeps working), carrying the
  quartiles, min, max and the sample count. It is `noisy` when its interquartile range exceeds 10% of the median.
  `speedup(base, new)` is a number only when the two interquartile intervals do not overlap, else "within noise":
  a ratio of two medians whose spreads overlap says nothing.
- Peak memory: `torch.cuda.max_memory_allocated` during one call, above what was allocated before it (CUDA only).
"""

from __future__ import annotations

import datetime
import importlib
import logging
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
        env.update(device=p.name, mem_gb=round(p.total_memory / 2**30, 1))
        if getattr(torch.version, "hip", None):  # ROCm: the gfx architecture; its "compute capability" is no sm_
            env.update(arch=str(getattr(p, "gcnArchName", "?")).split(":")[0], hip=torch.version.hip)
        else:
            env.update(sm=f"{p.major}{p.minor}", cuda=torch.version.cuda)
    else:
        env.update(device=f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    return env


class _NoCudaRuntimeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_cuda_probe() -> None:
    """Drop torch's "No CUDA runtime is found, using CUDA_HOME=..." warning (torch.utils.cpp_extension logs it
    when a CUDA build of torch runs without a GPU, as soon as torch.compile or an extension loader imports it).
    The benchmarks and the profiler state their device in their header; on a CPU run the warning only says that
    again, on the console, in the middle of the tables."""
    log = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeFilter) for f in log.filters):
        log.addFilter(_NoCudaRuntimeFilter())


NOISY_IQR = 0.10  # a Timing whose interquartile range exceeds this fraction of its median is flagged noisy


class Timing(float):
    """A timing in milliseconds: the float value is the median; q1, q3 (quartiles), lo, hi (min, max), n."""

    q1: float
    q3: float
    lo: float
    hi: float
    n: int
    method: str

    def __new__(cls, samples: list[float], method: str) -> Timing:
        if not samples:
            raise ValueError("Timing: no samples")
        xs = sorted(float(x) for x in samples)
        self = super().__new__(cls, statistics.median(xs))
        if len(xs) >= 2:
            q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        else:
            q1 = q3 = xs[0]
        self.q1, self.q3, self.lo, self.hi, self.n, self.method = q1, q3, xs[0], xs[-1], len(xs), method
        return self

    @property
    def noisy(self) -> bool:
        return self.q3 - self.q1 > NOISY_IQR * float(self)

    def fields(self, prefix: str = "ms") -> dict[str, Any]:
        """The row fields of this timing: median, quartiles, min, max, sample count, noisy flag, method."""
        return {
            prefix: float(self),
            f"{prefix}_q1": self.q1,
            f"{prefix}_q3": self.q3,
            f"{prefix}_min": self.lo,
            f"{prefix}_max": self.hi,
            "n": self.n,
            "noisy": self.noisy,
            "timing": self.method,
        }

    def __repr__(self) -> str:
        return f"Timing({float(self):.4g} ms, IQR {self.q1:.4g}..{self.q3:.4g}, n={self.n})"


WITHIN_NOISE = "within noise"
BASELINE = "baseline"


def speedup(base: float, new: float) -> float | str:
    """base / new, or WITHIN_NOISE when both are Timings whose interquartile intervals overlap: a ratio of two
    medians whose spreads overlap is not a speedup; BASELINE for the baseline's own row (`new is base`)."""
    if base is new:  # the baseline's own row
        return BASELINE
    if isinstance(base, Timing) and isinstance(new, Timing) and not (new.q3 < base.q1 or base.q3 < new.q1):
        return WITHIN_NOISE
    return float(base) / float(new)


def _settle(fn: Callable[[], object], warmup: int) -> None:
    """Warm-up calls until the median of the last 3 timings is within 10% of the 3 before (or max(warmup, 20)
    calls, or 2 s)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(warmup, 20) and time.perf_counter() - start < 2.0:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= max(warmup, 6):
            last, before = statistics.median(times[-3:]), statistics.median(times[-6:-3])
            if abs(last - before) <= 0.1 * before:
                return


def bench_ms(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    rep: int = 20,
    device: str = "cuda",
    min_s: float = 0.5,
    settle: bool = True,
) -> Timing:
    """A `Timing` of `fn()` in milliseconds (the module docstring says how, per device).

    CPU: warm-up until the timings settle (at least `warmup` calls), then at least `rep` timed calls and `min_s`
    seconds of them (`settle=False`: exactly `warmup` warm-up calls). CUDA: do_bench's own warm-up and repetitions
    (`warmup`/`rep`/`min_s`/`settle` are not used there).
    """
    if str(device).startswith("cuda"):
        from triton.testing import do_bench

        times = do_bench(fn, warmup=25, rep=100, return_mode="all")
        if not isinstance(times, list):
            raise TypeError(f"bench_ms: triton.testing.do_bench returned {type(times).__name__}, expected a list")
        return Timing(times, "CUDA events, triton.testing.do_bench (L2 flushed between calls)")
    if rep < 1 or warmup < 0:
        raise ValueError(f"bench_ms: expected rep >= 1 and warmup >= 0, got rep={rep}, warmup={warmup}")
    if settle:
        _settle(fn, warmup)
    else:
        for _ in range(warmup):
            fn()
    times = []
    start = time.perf_counter()
    while len(times) < rep or (time.perf_counter() - start < min_s and len(times) < 100 * rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return Timing(times, "time.perf_counter after a settled warm-up")


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
