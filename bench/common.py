"""Shared benchmark plumbing: timing, device header, peak memory, result rows.

Every op benchmark (bench/bench_<op>.py) exposes `run(args) -> list[dict]`; bench/run.py collects the rows,
prints one table per op and writes bench/results/<device>-<date>-<time>-<commit>/results.json (+ .md).
Each row carries: op, case, provider, mode, ms (a Timing: median, quartiles, min, max, samples; run.py writes them
out as ms, ms_q1, ms_q3, ms_min, ms_max, n, noisy), and where defined tflops / gbps, pct_peak, peak_mem_mb and
speedup (vs. the op's named baseline, same run; "within noise" where the two interquartile ranges overlap). The
timing method itself (bench_ms, speedup, peak_mem_mb, environment) is siglip2/profile/timing.py, shared with
`siglip2 profile`.
"""

from __future__ import annotations

import torch

# The timing method lives in the package (siglip2/profile/timing.py) so that `siglip2 profile` measures exactly as the
# benchmarks do; these names are re-exported for the bench modules.
from siglip2.profile.timing import (  # noqa: F401
    WITHIN_NOISE,
    Timing,
    environment,
    peak_mem_mb,
    quiet_cuda_probe,
    speedup,
)
from siglip2.profile.timing import bench_ms as _bench_ms

_progress = None  # bench/run.py's progress bar: called after every timed measurement
_dry_run = False  # bench/run.py --dry-run: every measurement is one timed call, no warm-up


def set_progress(callback) -> None:
    global _progress
    _progress = callback


def set_dry_run(on: bool) -> None:
    """Dry run (bench/gpu_check.sh --dry-run): check that every benchmark runs end to end, not how fast."""
    global _dry_run
    _dry_run = on


def bench_ms(fn, *, warmup: int = 3, rep: int = 20, device: str = "cuda") -> Timing:
    """siglip2.profile.timing.bench_ms (a Timing: median ms with its spread; do_bench on CUDA, perf_counter on CPU),
    ticking run.py's progress."""
    if _dry_run and not str(device).startswith("cuda"):
        ms = _bench_ms(fn, warmup=0, rep=1, device=device, min_s=0.0, settle=False)
    else:
        ms = _bench_ms(fn, warmup=warmup, rep=rep, device=device)
    if _progress is not None:
        _progress()
    return ms


# Dense bf16 tensor-core and HBM peaks used for "% of peak" (vendor numbers; the measured copy bandwidth
# is reported separately by bench/run.py so GB/s can be read against what the device actually sustains).
PEAKS = {
    "H100": {"bf16_tflops": 989.0, "fp16_tflops": 989.0, "fp32_tflops": 67.0, "hbm_gbps": 3350.0},
    "H200": {"bf16_tflops": 989.0, "fp16_tflops": 989.0, "fp32_tflops": 67.0, "hbm_gbps": 4800.0},
    "A100": {"bf16_tflops": 312.0, "fp16_tflops": 312.0, "fp32_tflops": 19.5, "hbm_gbps": 2039.0},
    # AMD Instinct (ROCm names the device "AMD Instinct MI300X" ...); dense matrix peaks, fp32 the vector rate
    "MI300X": {"bf16_tflops": 1307.4, "fp16_tflops": 1307.4, "fp32_tflops": 163.4, "hbm_gbps": 5300.0},
    "MI325X": {"bf16_tflops": 1307.4, "fp16_tflops": 1307.4, "fp32_tflops": 163.4, "hbm_gbps": 6000.0},
    "MI355X": {"bf16_tflops": 2516.6, "fp16_tflops": 2516.6, "fp32_tflops": 157.3, "hbm_gbps": 8000.0},
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
