"""Triton sigmoid (SigLIP) contrastive loss with its gradients computed in the forward pass.

loss = sum_ij softplus(-z_ij * l_ij) / norm, l = (T @ I^T) * exp(scale) + bias, z = +1 on the positive
diagonal (row == col) and -1 elsewhere; g = dloss/dl = -z * sigmoid(-z * l).
What is Triton: one fused GEMM + epilogue kernel per (text block, image block) tile computes S = T_blk @ I_blk^T
in fp32, the stable softplus / sigmoid from one exp, per-tile partial sums (loss, sum g*S, sum g) and the
gradient tile G = g * exp(scale) / norm, written in the input dtype. The embedding gradients are then two torch
matmuls on tensor cores, dT[chunk] = G @ I and dI += G^T @ T[chunk], and d scale / d bias come from the partial
sums (Liger's FLCE pattern: the loss is terminal, so backward only scales the saved gradients by grad_output).
That is 3 GEMMs of 2*n^2*d and 3 passes over the G buffer, no atomics, deterministic.
Memory: the logits are never stored; the G buffer is chunk x n elements of the input dtype, the full n x n while
that fits G_BUFFER_BYTES = 512 MiB (n <= 16384 in bf16/fp16, n <= 11585 in fp32), else the largest multiple of
BLOCK_M text rows that fits (at least BLOCK_M rows), processed chunk by chunk.
A fully fused dT/dI accumulator does not fit registers at d = 768/1152 (a 64 x 768 fp32 tile is 192
registers per thread at 8 warps), and atomics into fp32 dT/dI would move ~100 GB at n = 65536.
Launcher: `sigmoid_loss_block_fwd` (one text block x image block, the ring's step too); `sigmoid_loss_block_op`
is its torch.library custom op (`siglip2::sigmoid_loss_block`) with the autograd registration.
"""

# pyright: reportArgumentType=false, reportCallIssue=false, reportAttributeAccessIssue=false
# pyright: reportIndexIssue=false, reportPossiblyUnboundVariable=false, reportOperatorIssue=false
# (file-level, for the @triton.jit bodies: tl.constexpr parameters take Python literals, block tensors are indexed
# with [:, None], names are bound under `if CONSTEXPR:` branches, and `kernel[grid](..., num_warps=)` adds launch
# options; pyright cannot model Triton's language, so these rules give only false findings here. The Optional
# checks stay on for the launchers.)
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._configs import INTERPRETER_FAMILY, check_tables, device_family, dtype_class, launch_kwargs, split_entry
from ._utils import dot_fp32, dot_precision, interpreting, new_empty

# Upper bound of the G tile buffer (chunk x n elements in the input dtype). 512 MiB keeps the loss under
# ~1.5 GB at n = 65536, d = 768 while the gradient GEMMs keep K >= 1024.
G_BUFFER_BYTES = 512 * 2**20

# Launch configs, one table, keyed by GPU architecture family (kernels/_configs.py) and then by the embeddings'
# dtype class (`dtype_class`: "16bit" runs tensor-core dots, "fp32" IEEE FMA dots to match eager fp32).
# Rule for every entry: it compiles for every architecture of its family with no register spills (ptxas STACK
# == LOCAL == 0) and within the family's shared memory per block, under triton 3.8 and 3.9, in every variant a
# launch can specialize (dtype, EVEN_K, HAS_POS, STORE_G: kernels/aot_cases.py; tests/test_aot.py, all of them
# with SIGLIP2_AOT_FULL=1); among those, the largest tile. Throughput tuning on real GPUs is owed: no GPU has
# timed these.
# key -> (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages).
# 16-bit: 128 x 64 x 64 tiles with 8 warps, no stack use on sm_80/sm_90 (128 x 128 and 64 x 128 spill there);
# 2 stages: with 3, triton 3.6 (ptxas 12.8) spills the HAS_POS=False variant on sm_80 (128 registers + 8 B stack).
# fp32: smaller tiles keep the IEEE dot's registers in check.
_BASE = {
    "16bit": (128, 64, 64, 8, 2),
    "fp32": (64, 64, 32, 4, 3),
}
# sm_100: the fp32 64 x 64 x 32 tile with 4 warps spills 56 B at EVEN_K=False (triton 3.8 and 3.9; 2 stages: 32-40
# B); with 8 warps it is spill-free in every variant (224 registers). "default" (unknown architectures) takes it.
_SM100 = {**_BASE, "fp32": (64, 64, 32, 8, 3)}
# AMD ("amd", and CDNA's tiles below): 128 x 64 x 64 spills VGPRs on gfx942 (16) and gfx950 (127) with the
# positive diagonal and gradient tile, as does 128 x 64 x 32; 128 x 128 x 32 is clean there (141-148 VGPRs, 3.9).
_AMD = {**_SM100, "16bit": (128, 128, 32, 8, 2)}
# CDNA (gfx90a, gfx942, gfx950): HIP options (kernels/_configs.py HIP_OPTION_NAMES), triton 3.9, every variant:
# 16-bit matrix_instr_nonkdim=32 (Triton's own choice; 16 needs 2x the MFMA instructions, 192 vs 96 on gfx942, at
# 144 vs 141 VGPRs); fp32 16 (66 vs 140 VGPRs on gfx942, 64 vs 142 on gfx950); waves_per_eu=2, spill-free (max 148).
# RDNA (gfx1100, gfx1201: wave 32, 256 VGPRs): 128 x 128 x 32 with 8 warps spills 13-67 VGPRs in every 16-bit
# variant; 16 warps is clean (118-152 VGPRs; 64 x 128 and 128 x 64 with 8 warps too, at 123-152).
_CDNA = {
    "16bit": (*_AMD["16bit"], {"matrix_instr_nonkdim": 32, "waves_per_eu": 2}),
    "fp32": (*_AMD["fp32"], {"matrix_instr_nonkdim": 16, "waves_per_eu": 2}),
}
_RDNA = {**_AMD, "16bit": (128, 128, 32, 16, 2)}
CONFIGS = {
    **{"sm80": _BASE, "sm86": _BASE, "sm90": _BASE, "sm100": _SM100, "sm120": _BASE, "default": _SM100},
    **{f: _CDNA for f in ("gfx90a", "gfx942", "gfx950")},
    "rdna": _RDNA,
    "amd": _AMD,
}
check_tables("sigmoid_loss", CONFIGS)
# The interpreter runs one program at a time; fewer, mid-sized tiles are fastest there (the same tuple layout).
INTERPRET_CONFIG = (128, 128, 128, 4, 1)


# ----------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------


@triton.jit
def _epilogue(b_s, o_m, o_n, M, N, diag0, b_scale, b_bias, g, s_g, g_mul, HAS_POS: tl.constexpr, STORE_G: tl.constexpr):
    """Loss / gradient of a [BLOCK_M, BLOCK_H] tile of raw dots S; returns (sum loss, sum g*S, sum g)."""
    b_logit = b_s * b_scale + b_bias  # [BLOCK_M, BLOCK_H]
    # Everything is written in terms of l, so the positive-pair mask enters only as two exact corrections:
    # -logsigmoid(z*l) = softplus(l) - [pos]*l and g = sigmoid(l) - [pos], where relu(l) - l is exact.
    # One exp serves softplus and sigmoid: e = exp(-|l|) <= 1 never overflows and w = 1 + e is in [1, 2];
    # log1p(e) = log(w) + (e - (w - 1)) / w recovers the bits 1 + e rounds away (big |l|) and reuses 1/w.
    b_e = tl.exp(-tl.abs(b_logit))
    b_w = 1.0 + b_e
    b_r = tl.fdiv(tl.full(b_w.shape, 1.0, tl.float32), b_w)  # div.full (2 ulp): no IEEE slow path, w in [1, 2]
    b_relu = tl.maximum(b_logit, 0.0)  # [BLOCK_M, BLOCK_H]
    b_g = tl.where(b_logit >= 0, b_r, b_e * b_r)  # sigmoid(l)  [BLOCK_M, BLOCK_H]
    if HAS_POS:
        b_pos = ((o_m[:, None] + diag0) == o_n[None, :]).to(tl.float32)  # [BLOCK_M, BLOCK_H]
        b_relu -= b_pos * b_logit
        b_g -= b_pos
    b_loss = b_relu + (tl.log(b_w) + (b_e - (b_w - 1.0)) * b_r)  # [BLOCK_M, BLOCK_H]
    m_mn = (o_m < M)[:, None] & (o_n < N)[None, :]
    b_loss = tl.where(m_mn, b_loss, 0.0)
    b_g = tl.where(m_mn, b_g, 0.0)
    if STORE_G:
        p_g = g + (o_m[:, None] * s_g + o_n[None, :])
        tl.store(p_g, (b_g * (b_scale * g_mul)).to(g.dtype.element_ty), mask=m_mn)  # [BLOCK_M, BLOCK_H]
    return tl.sum(b_loss), tl.sum(b_g * b_s), tl.sum(b_g)


@triton.jit
def _sigmoid_loss_fwd_kernel(
    t,
    i,
    g,
    part,
    scale,
    bias,
    M,
    N,
    D,
    diag0,
    s_t,
    s_i,
    s_g,
    s_p,
    g_mul,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    HAS_POS: tl.constexpr,
    STORE_G: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """t: (M, D) text rows, i: (N, D) image rows; text row r is positive with image row r + diag0.

    Writes G[r, c] = g * exp(scale) * g_mul (if STORE_G) and, per program, part[0/1/2] = sums of
    softplus(-z*l), g*S and g over its tile.
    """
    # The tile is two [BLOCK_M, BLOCK_N // 2] halves with their own accumulators: the epilogue then runs on
    # half the elements at a time, which keeps it out of local memory on sm_90 (full width spills).
    BLOCK_H: tl.constexpr = BLOCK_N // 2
    i_m, i_n = tl.program_id(0), tl.program_id(1)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n0 = i_n * BLOCK_N + tl.arange(0, BLOCK_H)
    o_n1 = o_n0 + BLOCK_H
    o_k = tl.arange(0, BLOCK_K)
    # Out-of-range rows wrap onto valid ones (the triton matmul-tutorial trick): loads need only a K mask,
    # and those rows are masked out of the epilogue. 2-D row masks and int64 pointer tiles cost registers.
    p_t = t + ((o_m % M)[:, None] * s_t + o_k[None, :])
    p_i0 = i + ((o_n0 % N)[None, :] * s_i + o_k[:, None])
    p_i1 = i + ((o_n1 % N)[None, :] * s_i + o_k[:, None])

    b_s0 = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)
    b_s1 = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        if EVEN_K:
            b_t = tl.load(p_t)  # [BLOCK_M, BLOCK_K]
            b_i0 = tl.load(p_i0)  # [BLOCK_K, BLOCK_H]
            b_i1 = tl.load(p_i1)  # [BLOCK_K, BLOCK_H]
        else:
            m_k = (k0 + o_k) < D
            b_t = tl.load(p_t, mask=m_k[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
            b_i0 = tl.load(p_i0, mask=m_k[:, None], other=0.0)  # [BLOCK_K, BLOCK_H]
            b_i1 = tl.load(p_i1, mask=m_k[:, None], other=0.0)  # [BLOCK_K, BLOCK_H]
        if DOT_FP32:
            # the interpreter multiplies raw bf16 bit patterns in tl.dot: compute in fp32 there
            b_t = b_t.to(tl.float32)
            b_s0 += tl.dot(b_t, b_i0.to(tl.float32), input_precision="ieee")  # [BLOCK_M, BLOCK_H]
            b_s1 += tl.dot(b_t, b_i1.to(tl.float32), input_precision="ieee")  # [BLOCK_M, BLOCK_H]
        else:
            b_s0 += tl.dot(b_t, b_i0, input_precision=PRECISION)  # [BLOCK_M, BLOCK_H]
            b_s1 += tl.dot(b_t, b_i1, input_precision=PRECISION)  # [BLOCK_M, BLOCK_H]
        p_t += BLOCK_K
        p_i0 += BLOCK_K
        p_i1 += BLOCK_K

    b_scale = tl.exp(tl.load(scale).to(tl.float32))
    b_bias = tl.load(bias).to(tl.float32)
    l0, gs0, g0 = _epilogue(b_s0, o_m, o_n0, M, N, diag0, b_scale, b_bias, g, s_g, g_mul, HAS_POS, STORE_G)
    l1, gs1, g1 = _epilogue(b_s1, o_m, o_n1, M, N, diag0, b_scale, b_bias, g, s_g, g_mul, HAS_POS, STORE_G)
    i_p = i_m * tl.num_programs(1) + i_n
    tl.store(part + i_p, l0 + l1)
    tl.store(part + s_p + i_p, gs0 + gs1)
    tl.store(part + 2 * s_p + i_p, g0 + g1)


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------


# The @triton.jit kernel the launcher starts (kernels/aot_cases.py compiles it).
KERNELS = {"fwd": _sigmoid_loss_fwd_kernel}


def launch_config(dtype: torch.dtype, device: torch.device | None = None) -> tuple[tuple, dict]:
    """((BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), HIP options: {} but on AMD) the launcher uses for
    `dtype` on `device`."""
    if interpreting():
        return INTERPRET_CONFIG, {}
    fam = device_family(device) if device is not None else INTERPRETER_FAMILY
    return split_entry(CONFIGS[fam][dtype_class(dtype)], 5)


def chunk_rows(M: int, N: int, dtype: torch.dtype, device: torch.device | None = None) -> int:
    """Text rows per G buffer: as many as G_BUFFER_BYTES allows, a multiple of BLOCK_M, at least one block."""
    block_m = launch_config(dtype, device)[0][0]
    rows = G_BUFFER_BYTES // (max(N, 1) * torch.empty((), dtype=dtype).element_size())
    return min(M, max(block_m, rows // block_m * block_m))


def sigmoid_loss_block_fwd(
    image, text, logit_scale, logit_bias, positives: bool, norm: float, compute_grads: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and gradients of one (text block x image block) pair, all divided by `norm`: the Triton kernel per
    chunk of text rows, then the two torch matmuls that turn its gradient tile into d_text and d_image.

    image: (N, D), text: (M, D) (same dtype, fp16/bf16/fp32); logit_scale, logit_bias: 1-element tensors.
    With `positives`, text row r and image row r are the positive pair (M == N). Returns fp32 0-d loss,
    then (d_image (N, D), d_text (M, D), d_scale, d_bias) in the inputs' dtypes/shapes, or empty
    tensors when not `compute_grads`. No host sync: scale and bias are read on the device.
    """
    image, text = image.contiguous(), text.contiguous()
    M, D = text.shape
    N = image.shape[0]
    if max(M, N) * max(D, 1) >= 2**31:
        raise ValueError(f"sigmoid_loss: n * d must stay below 2**31 elements, got n={max(M, N)}, d={D}")
    device, dtype = text.device, text.dtype
    (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), hip = launch_config(dtype, device)
    launch = launch_kwargs(device_family(device), num_warps, num_stages, hip)
    chunk = chunk_rows(M, N, dtype, device)
    n_chunks = triton.cdiv(M, chunk)
    grid_n = triton.cdiv(N, BLOCK_N)
    # chunk is a multiple of BLOCK_M (or all of M), so the chunks' row blocks tile M exactly once
    part = new_empty((3, triton.cdiv(M, BLOCK_M) * grid_n), torch.float32, device)
    g = new_empty((chunk, N), dtype, device) if compute_grads else part  # unwritten unless STORE_G
    d_text = new_empty((M, D), dtype, device) if compute_grads else None
    d_image = None
    if compute_grads and n_chunks > 1:
        d_image = torch.zeros((N, D), dtype=torch.float32, device=device)
    scale = logit_scale.detach().reshape(1)
    # fp32 copies for the kernel (it computes in fp32 anyway): one specialization whatever the parameters' dtype
    scale32, bias32 = scale.float(), logit_bias.detach().reshape(1).float()

    for c in range(n_chunks):
        r0, rows = c * chunk, min(chunk, M - c * chunk)
        grid = (triton.cdiv(rows, BLOCK_M), grid_n)
        _sigmoid_loss_fwd_kernel[grid](
            t=text[r0:],
            i=image,
            g=g,
            part=part[:, r0 // BLOCK_M * grid_n :],
            scale=scale32,
            bias=bias32,
            M=rows,
            N=N,
            D=D,
            diag0=r0,
            s_t=text.stride(0),
            s_i=image.stride(0),
            s_g=g.stride(0),
            s_p=part.stride(0),
            g_mul=1.0 / norm,
            BLOCK_M=BLOCK_M,
            BLOCK_N=BLOCK_N,
            BLOCK_K=BLOCK_K,
            EVEN_K=D % BLOCK_K == 0,
            HAS_POS=positives,
            STORE_G=compute_grads,
            DOT_FP32=dot_fp32(),
            PRECISION=dot_precision(dtype),
            **launch,
        )
        if compute_grads:
            assert d_text is not None  # allocated above when compute_grads
            b_g = g[:rows]
            torch.mm(b_g, image, out=d_text[r0 : r0 + rows])  # [rows, D]
            if n_chunks == 1:
                d_image = torch.mm(b_g.t(), text)  # [N, D]
            else:
                d_image += torch.mm(b_g.t(), text[r0 : r0 + rows])  # fp32 accumulation across chunks

    sums = part.double().sum(dim=1) / norm  # [3]: loss, sum g*S, sum g (fp64 only for these 3 scalars)
    loss = sums[0].float()
    if not compute_grads:
        e = [torch.empty(0, device=device) for _ in range(4)]  # four tensors: custom-op outputs must not alias
        return loss, e[0], e[1], e[2], e[3]
    d_scale = (sums[1] * scale.double().exp()).to(logit_scale.dtype).reshape(logit_scale.shape)
    d_bias = sums[2].to(logit_bias.dtype).reshape(logit_bias.shape)
    assert d_image is not None and d_text is not None
    return loss, d_image.to(dtype), d_text, d_scale, d_bias


# ----------------------------------------------------------------------------------------------
# torch.library op + autograd (backward only scales the saved gradients by grad_output)
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("siglip2::sigmoid_loss_block", mutates_args=())
def sigmoid_loss_block_op(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    positives: bool,
    norm: float,
    compute_grads: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return sigmoid_loss_block_fwd(image, text, logit_scale, logit_bias, positives, norm, compute_grads)


@sigmoid_loss_block_op.register_fake
def _(image, text, logit_scale, logit_bias, positives, norm, compute_grads):
    loss = image.new_empty((), dtype=torch.float32)
    if not compute_grads:
        return (loss, *(image.new_empty(0, dtype=torch.float32) for _ in range(4)))
    # d_image / d_text are fresh contiguous tensors even for strided (e.g. transposed) embeddings
    return (
        loss,
        image.new_empty(image.shape),
        text.new_empty(text.shape),
        torch.empty_like(logit_scale),
        torch.empty_like(logit_bias),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*output[1:])


def _backward(ctx, grad_loss, *unused):
    d_image, d_text, d_scale, d_bias = ctx.saved_tensors
    if d_image.numel() == 0 and d_text.numel() == 0:
        raise RuntimeError("sigmoid_loss: backward through a call made with compute_grads=False")
    return grad_loss * d_image, grad_loss * d_text, grad_loss * d_scale, grad_loss * d_bias, None, None, None


torch.library.register_autograd("siglip2::sigmoid_loss_block", _backward, setup_context=_setup_context)
