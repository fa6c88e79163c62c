"""The one timing method (siglip2/profile/timing.py): a Timing carries its spread and sample count, a speedup is
printed only when the two interquartile intervals do not overlap, and CPU warm-up runs until the timings settle."""

import time

import pytest

from siglip2.profile.timing import BASELINE, NOISY_IQR, WITHIN_NOISE, Timing, bench_ms, speedup


def test_timing_statistics_by_hand():
    t = Timing([4.0, 1.0, 3.0, 2.0, 5.0], "test")
    assert float(t) == 3.0 and (t.q1, t.q3, t.lo, t.hi, t.n) == (2.0, 4.0, 1.0, 5.0, 5)
    assert t.noisy  # IQR 2 > 10% of 3
    quiet = Timing([10.0, 10.1, 9.9, 10.0], "test")
    assert not quiet.noisy and quiet.q3 - quiet.q1 <= NOISY_IQR * float(quiet)
    assert Timing([7.0], "test").fields() == {
        "ms": 7.0,
        "ms_q1": 7.0,
        "ms_q3": 7.0,
        "ms_min": 7.0,
        "ms_max": 7.0,
        "n": 1,
        "noisy": False,
        "timing": "test",
    }
    with pytest.raises(ValueError, match="no samples"):
        Timing([], "test")


def test_speedup_only_outside_the_noise():
    base = Timing([10.0, 10.2, 9.8, 10.1], "test")
    fast = Timing([5.0, 5.1, 4.9, 5.0], "test")
    assert speedup(base, fast) == pytest.approx(10.05 / 5.0)  # the medians
    overlapping = Timing([9.0, 10.0, 11.0, 9.5, 10.5], "test")  # IQR 9.5..10.5 overlaps 9.95..10.125
    assert speedup(base, overlapping) == WITHIN_NOISE
    assert speedup(base, base) == BASELINE  # the baseline's own row
    same = Timing([10.0, 10.2, 9.8, 10.1], "test")  # an equal timing that is not the baseline row: noise
    assert speedup(base, same) == WITHIN_NOISE
    assert speedup(10.0, 5.0) == 2.0  # plain numbers: no interval to compare


def test_cpu_warmup_runs_until_the_timings_settle():
    """The first calls of a new shape are slow (allocation, tracing): they must not reach the timed samples."""
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.03 if len(calls) <= 4 else 0.002)

    t = bench_ms(fn, warmup=1, rep=5, device="cpu", min_s=0.0)
    assert t.n >= 5 and len(calls) >= t.n + 4
    assert t.hi < 20.0, t  # no 30 ms first call among the samples
    assert 1.5 <= float(t) < 10.0, t
