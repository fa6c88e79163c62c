"""Ring-distributed SigLIP loss: text blocks travel around the group with batch_isend_irecv.

Step k on rank r holds the text block of rank s = r - k (mod W), sent on to r + 1 while this step computes
(overlap). Only step 0 (the local block) has positives. The fp32 text-gradient accumulator of each block
travels one step behind its text block and, after W steps, arrives back at its owner. Each step reuses
the single-GPU block launcher (`sigmoid_loss_triton.sigmoid_loss_block_fwd`: the Triton kernel plus two torch
matmuls for the embedding gradients) or its materialized equivalent `reference.sigmoid_loss_block`.

Local batch sizes may differ between ranks (the last batch of an epoch, token-budget or mixed-budget NaFlex
batches): one all_gather of every rank's (n, d) sizes the receive buffers, the blocks are rectangular
(n_s texts x n_r images), and the loss is normalized by the global n = sum of the local sizes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import reference


def _p2p(send: torch.Tensor, recv: torch.Tensor, nxt: int, prv: int, group):
    ops = [dist.P2POp(dist.isend, send, nxt, group), dist.P2POp(dist.irecv, recv, prv, group)]
    return dist.batch_isend_irecv(ops)


def _wait(works):
    for w in works:
        w.wait()


def _local_sizes(text, group, W) -> list:
    """Every rank's local batch size (one all_gather of (n, d)); mismatched widths raise on every rank alike."""
    mine = torch.tensor(text.shape, dtype=torch.int64, device=text.device)
    sizes = [torch.empty_like(mine) for _ in range(W)]
    dist.all_gather(sizes, mine, group=group)
    sizes = torch.stack(sizes).tolist()
    if len({d for _, d in sizes}) != 1:
        raise ValueError(
            f"sigmoid_loss: every rank must pass embeddings of the same width d, got (n, d) per "
            f"rank {[tuple(x) for x in sizes]}"
        )
    return [n for n, _ in sizes]


def _ring_forward(image, text, logit_scale, logit_bias, group, block, compute_grads):
    W, r = dist.get_world_size(group), dist.get_rank(group)
    nxt, prv = dist.get_global_rank(group, (r + 1) % W), dist.get_global_rank(group, (r - 1) % W)
    sizes = _local_sizes(text, group, W) if W > 1 else [text.shape[0]]
    norm = float(sum(sizes))
    text_cur = text.detach().contiguous()
    loss = torch.zeros((), dtype=torch.float32, device=text.device)
    d_image = torch.zeros(image.shape, dtype=torch.float32, device=image.device) if compute_grads else None
    d_scale = d_bias = None
    acc_works, acc_recv = [], None
    for k in range(W):
        # what arrives from rank r-1 after step k: the text block (and its accumulator) of rank r-k-1
        n_next = sizes[(r - k - 1) % W]
        if k < W - 1:
            text_next = text_cur.new_empty((n_next, text_cur.shape[1]))
            text_works = _p2p(text_cur, text_next, nxt, prv, group)  # overlaps this step's compute
        b_loss, b_di, b_dt, b_ds, b_db = block(image, text_cur, logit_scale, logit_bias, k == 0, norm, compute_grads)
        loss += b_loss
        if compute_grads:
            d_image += b_di
            d_scale = b_ds if d_scale is None else d_scale + b_ds
            d_bias = b_db if d_bias is None else d_bias + b_db
            _wait(acc_works)  # the accumulator of text_cur, sent by rank r-1 after its step k-1
            acc = b_dt.float() if k == 0 else acc_recv + b_dt.float()
            if W == 1:
                acc_recv = acc
            else:
                acc_recv = acc.new_empty((n_next, acc.shape[1]))
                # after step W-1, rank r-1 holds rank r's block: the last exchange returns each rank its dT
                acc_works = _p2p(acc, acc_recv, nxt, prv, group)
        if k < W - 1:
            _wait(text_works)
            text_cur = text_next
    _wait(acc_works)
    dist.all_reduce(loss, group=group)
    if not compute_grads:
        return loss, None
    assert d_image is not None and acc_recv is not None  # compute_grads: allocated, and W >= 1 steps ran
    return loss, (d_image.to(image.dtype), acc_recv.to(text.dtype), d_scale, d_bias)


class _RingSigmoidLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, logit_scale, logit_bias, group, block):
        loss, grads = _ring_forward(image, text, logit_scale, logit_bias, group, block, True)
        assert grads is not None  # compute_grads=True
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        d_image, d_text, d_scale, d_bias = ctx.saved_tensors
        return grad_loss * d_image, grad_loss * d_text, grad_loss * d_scale, grad_loss * d_bias, None, None


def ring_sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, *, group, impl: str):
    """Global-batch loss (0-d fp32) on every rank; gradient convention in `DistributedSigmoidLoss`."""
    if impl == "triton":
        from .sigmoid_loss_triton import sigmoid_loss_block_fwd as block
    else:
        block = reference.sigmoid_loss_block
    inputs = (image_embeds, text_embeds, logit_scale, logit_bias)
    if torch.is_grad_enabled() and any(x.requires_grad for x in inputs):
        loss = _RingSigmoidLoss.apply(*inputs, group, block)
    else:
        loss = _ring_forward(*inputs, group, block, False)[0]
    return loss
