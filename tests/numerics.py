"""Tolerance helpers: a kernel's error against a float64 oracle may be at most `factor` x the error of the
eager reference run at the same precision (flash-attention's "at most twice PyTorch's error" rule).
"""

import torch


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_to_oracle(name, out, oracle, baseline, factor: float = 2.0, atol: float = 1e-6):
    """out, baseline: low-precision results (kernel, eager reference); oracle: float64 result.

    `atol` is a floor for results where the baseline happens to be (almost) exact.
    """
    assert out.shape == oracle.shape, f"{name}: shape {tuple(out.shape)} != {tuple(oracle.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values in output"
    err, ref_err = max_err(out, oracle), max_err(baseline, oracle)
    assert err <= factor * ref_err + atol, (
        f"{name}: max error {err:.3e} vs float64 exceeds {factor} x eager reference error {ref_err:.3e} (+{atol:g})"
    )
