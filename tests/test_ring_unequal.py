"""The ring SigLIP loss with unequal local batch sizes (gloo, CPU): `pytest tests/test_ring_unequal.py` (~15 s).

Each rank's loss and gradients are checked against an all-gather reference computed in the same rank: the local
embeddings of every rank are gathered, the materialized loss of the concatenated batch is differentiated, and the
rank keeps the gradient rows of its own pairs (and the full logit_scale / logit_bias gradients, which the ring
splits into per-rank shares that sum to them). Also: DistributedSigmoidLoss without a process group raises.
"""

import os
import socket
import time

import pytest
import torch
import torch.nn.functional as F

from siglip2.kernels import reference

# private: the kernels' own rule for when Triton runs on CPU (TRITON_INTERPRET), not part of their API
from siglip2.kernels._utils import interpreting
from siglip2.kernels.loss import DistributedSigmoidLoss


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_inputs(rank, sizes, d, dtype):
    g = torch.Generator().manual_seed(100 + rank)
    img = F.normalize(torch.randn(sizes[rank], d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(
        F.normalize(torch.randn(sizes[rank], d, generator=g, dtype=torch.float64), dim=-1) + 2 * img, dim=-1
    )
    return img.to(dtype), txt.to(dtype)


def _all_gather_rows(x, sizes):
    """Concatenate every rank's (n_r, d) rows (unequal n_r: pad to the largest, gather, unpad)."""
    import torch.distributed as dist

    m = max(sizes)
    padded = torch.zeros(m, x.shape[1], dtype=x.dtype)
    padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[:n] for o, n in zip(out, sizes)])


def _join(ctx, timeout):
    """Join spawned ranks, killing them after `timeout` seconds (a hung collective fails the test, not CI)."""
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed ranks did not finish within {timeout} s")


def _worker(rank, world, port, impl, sizes, d, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        img, txt = (x.requires_grad_() for x in _local_inputs(rank, sizes, d, torch.float32))
        s = torch.tensor([2.3], requires_grad=True)
        b = torch.tensor([-1.5], requires_grad=True)
        loss = DistributedSigmoidLoss(impl=impl)(img, txt, s, b)
        loss.backward()
        with torch.no_grad():
            no_grad_loss = DistributedSigmoidLoss(impl=impl)(img, txt, s, b)
        ds, db = s.grad.clone(), b.grad.clone()
        dist.all_reduce(ds)  # per-rank shares of the scalar gradients
        dist.all_reduce(db)
        # the all-gather reference, in float64 and in float32 (the eager error the ring is allowed ~2x of)
        refs = {}
        for dt in (torch.float64, torch.float32):
            ai, at = (_all_gather_rows(x.detach().to(dt), sizes) for x in (img, txt))
            ai.requires_grad_()
            at.requires_grad_()
            rs, rb = (x.detach().to(dt).requires_grad_() for x in (s, b))
            ref = reference.sigmoid_loss(ai, at, rs, rb)
            gi, gt, gs, gb = torch.autograd.grad(ref, (ai, at, rs, rb))
            rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
            refs[dt] = (ref.detach(), gi[rows], gt[rows], gs, gb)
        results[rank] = ((loss.detach(), no_grad_loss, img.grad, txt.grad, ds, db), refs)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "impl,sizes", [("reference", [1, 4, 2]), ("triton", [5, 2])], ids=["ref-3ranks", "triton-2ranks"]
)
def test_ring_unequal_local_batches_match_all_gather(impl, sizes):
    import torch.multiprocessing as mp

    if impl == "triton":
        pytest.importorskip("triton")
        if not interpreting():
            pytest.skip("gloo ranks hold CPU tensors: the Triton blocks need TRITON_INTERPRET=1")
    world, d = len(sizes), 24
    with mp.Manager() as manager:
        results = manager.dict()
        ctx = mp.spawn(_worker, args=(world, _free_port(), impl, sizes, d, results), nprocs=world, join=False)
        _join(ctx, timeout=120)
        results = dict(results)
    names = ("loss", "no_grad_loss", "d_image", "d_text", "d_scale", "d_bias")
    for r in range(world):
        ours, refs = results[r]
        hi, lo = refs[torch.float64], refs[torch.float32]
        hi = (hi[0], hi[0], *hi[1:])
        lo = (lo[0], lo[0], *lo[1:])
        for name, a, o, e in zip(names, ours, hi, lo):
            assert a.shape == o.shape, (r, name)
            err, eager = (a.double() - o).abs().max().item(), (e.double() - o).abs().max().item()
            assert err <= 2 * eager + 2e-6, f"rank {r} {name}: error {err:.3g} vs the fp32 all-gather's {eager:.3g}"


def test_distributed_loss_without_process_group_raises():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a default process group is initialized in this process")
    x = F.normalize(torch.randn(3, 8), dim=-1)
    with pytest.raises(RuntimeError, match=r"no torch.distributed process group is initialized"):
        DistributedSigmoidLoss(impl="reference")(x, x, torch.zeros(1), torch.zeros(1))
