"""The optimizer step of `siglip2 train`, pinned to values (`pytest tests/test_train_optim.py`, ~15 s on 2 cores).

A convergence test cannot see these: two runs sharing a wrong schedule, a wrong decay set or a skipped clip still
converge, and Adam's scale invariance hides a missing clip from the loss. So AdamW is swapped for a subclass that
records, at every `step()`, each group's lr and weight decay and the norm of the gradients it is about to apply:

- the lr of every step against the warm-up + cosine formula written out here (warm-up start, warm-up end, the
  cosine's end at --min-lr-ratio);
- which parameters are decayed: every weight matrix and embedding (and the pooling head's probe), and no bias,
  LayerNorm, logit_scale or logit_bias;
- the gradients stepped on are the clipped ones: norm == --max-grad-norm whenever the logged pre-clip norm is
  above it, the unclipped norm otherwise.
"""

import json
import math
import os
import sys
from typing import ClassVar

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from shapes import make_dataset
from test_tokenization import make_tokenizer_dir

from siglip2.train import TrainConfig, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("optim")
    make_tokenizer_dir(str(root / "tok"), model_type=None)
    return {"train": make_dataset(str(root), 48, seed=0, name="train"), "tok": str(root / "tok")}


class _Recorder(torch.optim.AdamW):
    steps: ClassVar[list] = []

    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads]))
        type(self).steps.append(
            {
                "lr": [g["lr"] for g in self.param_groups],
                "weight_decay": [g["weight_decay"] for g in self.param_groups],
                "n_params": [len(g["params"]) for g in self.param_groups],
                "grad_norm": float(norm),
            }
        )
        return super().step(closure)


def _run(data, out, monkeypatch, **kw):
    monkeypatch.setattr(_Recorder, "steps", [])
    monkeypatch.setattr(torch.optim, "AdamW", _Recorder)
    cfg = {
        "data": data["train"],
        "model": "tiny",
        "tokenizer": data["tok"],
        "out": str(out),
        "kernel_impl": "reference",
        "workers": 0,
        "progress": False,
        "log_every": 1,
        "lr": 1e-3,
        "seq_lens": (32,),
        "batch_size": 8,
        "steps": 5,
    }
    cfg.update(kw)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(**cfg))
    finally:
        torch.set_num_threads(n)
    with open(os.path.join(out, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    return _Recorder.steps, log


def _expected_factor(s, warmup, total, min_ratio):
    """The schedule as documented: linear warm-up (step s runs at (s+1)/warmup of the peak), then a half cosine
    from the peak down to min_ratio of it, reached at step `total`."""
    if s < warmup:
        return (s + 1) / warmup
    t = (s - warmup) / (total - warmup)
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * t)) / 2


def test_lr_schedule_and_decay_groups_at_every_step(data, tmp_path, monkeypatch):
    lr, warmup, total, min_ratio, wd = 2e-3, 2, 6, 0.25, 0.05
    steps, log = _run(
        data, tmp_path / "o", monkeypatch, lr=lr, warmup=warmup, steps=total, min_lr_ratio=min_ratio, weight_decay=wd
    )
    assert len(steps) == total
    for s, rec in enumerate(steps):
        want = lr * _expected_factor(s, warmup, total, min_ratio)
        assert rec["lr"] == pytest.approx([want, want], rel=1e-12), f"step {s}"
        assert rec["weight_decay"] == [wd, 0.0]
    assert steps[0]["lr"][0] == pytest.approx(lr / warmup)  # warm-up start: not 0, not the peak
    assert steps[warmup - 1]["lr"][0] == pytest.approx(lr)  # warm-up end: the peak
    assert steps[warmup]["lr"][0] == pytest.approx(lr)  # the cosine starts at the peak
    # the lr logged after the last step is the cosine's end: exactly --min-lr-ratio of the peak
    assert log[-1]["step"] == total and log[-1]["lr"] == pytest.approx(lr * min_ratio, rel=1e-12)
    assert [r["lr"] for r in log] == pytest.approx(
        [lr * _expected_factor(s, warmup, total, min_ratio) for s in range(1, total + 1)]
    )


def test_no_warmup_starts_at_the_peak_and_ends_at_min_ratio_zero(data, tmp_path, monkeypatch):
    lr, total = 1e-3, 4
    steps, log = _run(data, tmp_path / "o", monkeypatch, lr=lr, warmup=0, steps=total, min_lr_ratio=0.0)
    assert steps[0]["lr"][0] == pytest.approx(lr)
    assert [r["lr"][0] for r in steps] == pytest.approx(
        [lr * (1 + math.cos(math.pi * s / total)) / 2 for s in range(total)]
    )
    assert log[-1]["lr"] == pytest.approx(0.0, abs=1e-15)


def _names_by_group(wd):
    from siglip2.fast import Siglip2Model
    from siglip2.train.model import ContrastiveForward, param_groups, size_config

    module = ContrastiveForward(Siglip2Model(size_config("tiny", 100)))
    names = {id(p): n for n, p in module.named_parameters()}
    groups = param_groups(module, wd)
    return module, [{names[id(p)] for p in g["params"]} for g in groups], [g["weight_decay"] for g in groups]


def test_decay_groups_weights_and_embeddings_only():
    module, (decay, no_decay), wds = _names_by_group(0.1)
    assert wds == [0.1, 0.0]
    want_decay, want_no = set(), set()
    for mn, mod in module.named_modules():
        for pn, _ in mod.named_parameters(recurse=False):
            name = f"{mn}.{pn}" if mn else pn
            if isinstance(mod, torch.nn.LayerNorm) or pn.endswith("bias") or pn in ("logit_scale", "logit_bias"):
                want_no.add(name)
            elif (isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)) and pn == "weight") or pn in (
                "in_proj_weight",  # nn.MultiheadAttention's packed q/k/v matrix
                "probe",  # the pooling head's learned query
            ):
                want_decay.add(name)
            else:
                raise AssertionError(f"unclassified parameter {name} of {type(mod).__name__}")
    assert decay == want_decay, (sorted(decay - want_decay), sorted(want_decay - decay))
    assert no_decay == want_no, (sorted(no_decay - want_no), sorted(want_no - no_decay))
    # the classes the rule exists for, named so that an empty class cannot pass
    for n in (
        "model.text_model.embeddings.token_embedding.weight",
        "model.vision_model.embeddings.position_embedding.weight",
    ):
        assert n in decay
    assert {"model.logit_scale", "model.logit_bias"} <= no_decay
    assert any("layer_norm" in n for n in no_decay) and any(n.endswith("q_proj.bias") for n in no_decay)
    assert any(n.endswith("patch_embedding.weight") for n in decay) and any(n.endswith("fc1.weight") for n in decay)


def test_lock_image_leaves_the_vision_tower_out_of_both_groups():
    from siglip2.fast import Siglip2Model
    from siglip2.train.model import ContrastiveForward, param_groups, size_config

    module = ContrastiveForward(Siglip2Model(size_config("tiny", 100)), lock_image=True)
    names = {id(p): n for n, p in module.named_parameters()}
    got = {names[id(p)] for g in param_groups(module, 0.1) for p in g["params"]}
    assert got == {n for n, p in module.named_parameters() if p.requires_grad}
    assert got and not any(".vision_model." in n for n in got)


def test_optimizer_steps_on_clipped_gradients(data, tmp_path, monkeypatch):
    clip = 1e-3  # far below the gradient norm of a random init: every step clips
    steps, log = _run(data, tmp_path / "c", monkeypatch, max_grad_norm=clip, steps=3)
    assert len(steps) == len(log) == 3
    for rec, row in zip(steps, log):
        assert row["grad_norm"] > 10 * clip  # the log keeps the pre-clip norm
        assert rec["grad_norm"] == pytest.approx(clip, rel=1e-4)
    steps, log = _run(data, tmp_path / "n", monkeypatch, max_grad_norm=1e6, steps=2)
    for rec, row in zip(steps, log):  # below the bound: the gradients stepped on are the unclipped ones
        assert rec["grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-5)
    steps, log = _run(data, tmp_path / "z", monkeypatch, max_grad_norm=0.0, steps=2)
    for rec, row in zip(steps, log):  # 0: clipping off
        assert rec["grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-5) and row["grad_norm"] > 1e-2
