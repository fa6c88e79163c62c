"""Public SigLIP sigmoid-loss op: validation and dispatch (Triton or the materialized reference), single
process or across a torch.distributed group. Triton is imported only inside the dispatch.

loss = -sum_ij logsigmoid(z_ij * (t_i . x_j * exp(logit_scale) + logit_bias)) / n, z = +1 on the diagonal
and -1 elsewhere: exactly transformers' `Siglip2Model(return_loss=True)` loss on the normalized embeddings.

What is Triton (kernels/sigmoid_loss_triton.py): one kernel computes the logits tile by tile, the loss partial
sums and the gradient tile G = dloss/dlogits, all in the forward pass; the embedding gradients are then torch
matmuls (G @ image, G^T @ text) and d logit_scale / d logit_bias come from the kernel's partial sums. The
backward only scales these saved gradients. The logits are never stored; G is n x n in the input dtype up to a
512 MiB cap (`G_BUFFER_BYTES`), processed in chunks of text rows beyond it.
"""

from __future__ import annotations

import torch

from . import reference
from ._utils import check_tensor, resolve_impl

_OP = "sigmoid_loss"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # float64: reference only


def _validate(image_embeds, text_embeds, logit_scale, logit_bias) -> None:
    check_tensor("image_embeds", image_embeds, ndim=2, dtypes=_DTYPES, op=_OP)
    device = image_embeds.device
    check_tensor("text_embeds", text_embeds, ndim=2, dtypes=(image_embeds.dtype,), device=device, op=_OP)
    if text_embeds.shape != image_embeds.shape:
        raise ValueError(
            f"{_OP}: text_embeds and image_embeds must have the same (n, d) shape (a square "
            f"batch of pairs), got text {tuple(text_embeds.shape)}, "
            f"image {tuple(image_embeds.shape)}"
        )
    if image_embeds.shape[0] == 0 or image_embeds.shape[1] == 0:
        raise ValueError(f"{_OP}: embeddings must be non-empty (n >= 1, d >= 1), got {tuple(image_embeds.shape)}")
    for name, t in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        check_tensor(name, t, dtypes=_DTYPES, device=device, op=_OP)
        if t.shape not in (torch.Size([]), torch.Size([1])):
            raise ValueError(f"{_OP}: {name} must be a scalar tensor of shape () or (1,), got {tuple(t.shape)}")


def loss_dtype(text_embeds, logit_scale, logit_bias) -> torch.dtype:
    """The dtype transformers' loss has: its float32 label matrix promotes half-precision logits, so the loss is
    fp32 unless something is fp64. A (1,)-shaped scale or bias takes part in type promotion; a 0-d one does not."""
    dtype = torch.promote_types(text_embeds.dtype, torch.float32)
    for t in (logit_scale, logit_bias):
        if t.ndim > 0:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, *, impl: str = "auto", group=None):
    """SigLIP loss without storing the n x n logits (Triton) or materialized (reference); a 0-d tensor.

    image_embeds, text_embeds: (n, d) fp16/bf16/fp32, L2-normalized by the caller, row i of each is a pair.
    logit_scale: the log of the logit scale (exponentiated here), shape () or (1,);
    logit_bias: shape () or (1,).
    impl: "auto" (Triton on CUDA, or on the CPU under TRITON_INTERPRET=1; the reference otherwise and for float64
    embeddings), "triton" (raises where it cannot run) or "reference".
    group: a torch.distributed process group; each rank passes its local pairs and gets the loss of the
    concatenated global batch (see `DistributedSigmoidLoss` for the gradient convention).
    Differentiable in all four inputs; with Triton the gradients are computed in the forward pass (see above).
    """
    _validate(image_embeds, text_embeds, logit_scale, logit_bias)
    impl = resolve_impl(
        impl, image_embeds.device, _OP, "float64 inputs" if image_embeds.dtype == torch.float64 else None
    )
    if group is not None:
        from .sigmoid_loss_dist import ring_sigmoid_loss

        loss = ring_sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, group=group, impl=impl)
    elif impl == "reference":
        return reference.sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias)
    else:
        from .sigmoid_loss_triton import sigmoid_loss_block_op

        inputs = (image_embeds, text_embeds, logit_scale, logit_bias)
        need_grad = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
        # one block holding every pair: positives on its diagonal, normalized by n
        loss = sigmoid_loss_block_op(*inputs, True, float(text_embeds.shape[0]), need_grad)[0]
    return loss.to(loss_dtype(text_embeds, logit_scale, logit_bias))  # fp32 inside, transformers' dtype out


class DistributedSigmoidLoss(torch.nn.Module):
    """SigLIP loss over the global batch of a process group; text blocks travel around a P2P ring.

    Every rank passes its local (n_r, d) image and text embeddings (n_r may differ between ranks: the last batch,
    token-budget batches) and gets the loss of the concatenated global batch of N = sum n_r pairs, normalized by
    N, as a single process would compute it. Gradients: each rank's embedding gradients are exactly the
    single-process gradient rows of its own pairs (text gradients come back over the ring), and its
    logit_scale / logit_bias gradients are its share, which summed over ranks give the single-process ones.
    So summing every parameter gradient over ranks is exact; DDP's average gives it divided by W for all
    parameters alike (multiply the loss by W, or use the per-rank-mean convention of open_clip, to undo it).
    Gradients are computed in the forward pass: every rank must back-propagate the same multiple of the
    loss (loss.backward(), or uniform loss scaling).

    There is no single-process fallback: without `group` and without an initialized default process group the
    call raises a RuntimeError (use `sigmoid_loss` in one process), so a misconfigured launch never trains
    silently on the local batch alone.
    """

    def __init__(self, group=None, impl: str = "auto"):
        super().__init__()
        self.group = group
        self.impl = impl

    def forward(self, image_embeds, text_embeds, logit_scale, logit_bias):
        import torch.distributed as dist

        if self.group is None and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "DistributedSigmoidLoss: no torch.distributed process group is initialized "
                "(expected a launch under torchrun and torch.distributed.init_process_group, or "
                "an explicit group=); in a single process use siglip2.kernels.sigmoid_loss"
            )
        group = self.group if self.group is not None else dist.group.WORLD
        return sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, impl=self.impl, group=group)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}"
