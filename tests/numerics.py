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


def sigmoid_loss_sensitivity(logits: torch.Tensor, logit_bias: float) -> dict[str, torch.Tensor]:
    """How errors in the logits move transformers' SigLIP loss and its two scalar gradients, to first order.

    logits: the exact (float64) n x n logits l = t v^T exp(s) + b; y = +1 on the diagonal, -1 elsewhere;
    L = -(1/n) sum_ij logsigmoid(y_ij l_ij), G = dL/dl = -y sigmoid(-y l) / n, h = dG/dl = sigmoid(l) sigmoid(-l) / n.
    Returns per-logit weights w (n x n, >= 0) such that sum_ij w_ij |dl_ij| bounds the error that logit errors dl
    cause, to first order, in
      "loss":         L                          w = |G|
      "logit_bias":   dL/db = sum_ij G_ij        w = h
      "logit_scale":  dL/ds = sum_ij G_ij (l_ij - b)   w = |h (l - b) + G|
    (the loss's remainder is at most sum_ij h dl^2 / 2 <= sum_ij dl_ij^2 / (8 n)). Unlike one signed error of the
    scalar, which cancels to ~0 by chance for some inputs, such a weighted sum of n^2 non-negative terms is a stable
    yardstick: "twice transformers' error" means something for it. Also returns, under "<name> terms", the
    magnitudes |term_ij| of the sum that computes each quantity (its rounding is at most n^2 eps sum |term_ij|).
    """
    n = logits.shape[0]
    y = 2 * torch.eye(n, dtype=logits.dtype, device=logits.device) - 1
    G = -y * torch.sigmoid(-y * logits) / n
    h = torch.sigmoid(logits) * torch.sigmoid(-logits) / n
    shifted = logits - logit_bias
    return {
        "loss": G.abs(),
        "logit_bias": h,
        "logit_scale": (h * shifted + G).abs(),
        "loss terms": -torch.nn.functional.logsigmoid(y * logits) / n,
        "logit_bias terms": G.abs(),
        "logit_scale terms": (G * shifted).abs(),
    }
