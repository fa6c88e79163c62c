"""Triton NaFlex patch embedding: linear patch projection + per-image antialiased bilinear position resize.

Forward, one launch: out[b, t] = x[b, t] @ W^T + bias + pos_b[t], where pos_b = Wh_b . P . Ww_b^T is the
(h_b, w_b) bilinear, antialiased, align_corners=False resize of the learned (G, G) grid P. The 1-D weights
Wh/Ww are evaluated on the device from `spatial_shapes` (no host sync) and applied as a second, small tl.dot
into the GEMM accumulator: for each source grid row i touched by the tile, A_i[m, j] = Wh[y_m, i] * Ww[x_m, j]
and acc += A_i @ P[i*G:(i+1)*G]. Padding rows (t >= h*w) use (y, x) = (0, 0), as transformers does.
Backward: only d pos_embed is Triton (the adjoint of every image's resize, written as deterministic
per-batch-chunk partials and reduced with one torch sum); dX, dW and dbias are torch matmuls / a torch sum.
The resize math is fp32 whatever the parameter dtype.
Launchers: `patch_embed_fwd`, `patch_embed_bwd` (calls `pos_embed_adjoint`); `patch_embed_op` is the
torch.library custom op (`siglip2::naflex_patch_embed`) that kernels/patch_embed.py calls.
"""

# pyright: reportArgumentType=false, reportCallIssue=false, reportAttributeAccessIssue=false
# pyright: reportIndexIssue=false, reportPossiblyUnboundVariable=false, reportOperatorIssue=false
# (file-level, for the @triton.jit bodies: tl.constexpr parameters take Python literals, block tensors are indexed
# with [:, None], names are bound under `if CONSTEXPR:` branches, and `kernel[grid](..., num_warps=)` adds launch
# options; pyright cannot model Triton's language, so these rules give only false findings here. The Optional
# checks stay on for the launchers.)
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._configs import check_tables, device_family, dtype_class, launch_kwargs, split_entry
from ._utils import dot_fp32, dot_precision, fp32_dot_precision, interpreting, new_empty

# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _axis_filter(o_out, n_out, G: tl.constexpr, BLOCK_G: tl.constexpr):
    """Per output index: (center, 1/support, normalizer) of torch's antialiased triangle filter, in fp32.

    Downsampling (scale = G/n_out > 1) widens the triangle to `scale` source pixels; upsampling is plain
    bilinear. The normalizer is the sum of the taps that fall inside [0, G), which gives edge clamping.
    """
    scale = G / n_out.to(tl.float32)
    inv = 1.0 / tl.maximum(scale, 1.0)
    center = scale * (o_out.to(tl.float32) + 0.5)  # [BLOCK_M]
    o_g = tl.arange(0, BLOCK_G)
    # [BLOCK_M, BLOCK_G]
    b_taps = tl.maximum(1.0 - tl.abs((o_g[None, :].to(tl.float32) + 0.5 - center[:, None]) * inv), 0.0)
    b_taps = tl.where(o_g[None, :] < G, b_taps, 0.0)
    total = tl.sum(b_taps, axis=1)  # [BLOCK_M]
    return center, inv, total


@triton.jit
def _tap(i, center, inv, total):
    """Normalized weight of source index `i` (scalar or block) for each output index: a [BLOCK_M] vector."""
    return tl.maximum(1.0 - tl.abs((i + 0.5 - center) * inv), 0.0) / total


@triton.jit
def _grid_coords(o_t, n_valid, w):
    """Token index -> (y, x) on the h x w grid; padding tokens (t >= h*w) reuse position (0, 0)."""
    valid = o_t < n_valid
    return tl.where(valid, o_t // w, 0), tl.where(valid, o_t % w, 0)


@triton.jit
def _patch_embed_fwd_kernel(
    x,  # pixel_values (B, L, K), any float dtype
    weight,  # (D, K)
    bias,  # (D,)
    pos,  # (G*G, D) learned grid, row-major (i, j)
    shapes,  # (B, 2) int (h, w)
    cu_seqlens,  # (B+1,) int32, only read when PACKED
    y,  # out: (B, L, D), or (total, D) when PACKED
    L,
    K,
    D,
    total_rows,
    G: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PACKED: tl.constexpr,
    DOT_FP32: tl.constexpr,
    MAIN_PREC: tl.constexpr,
    POS_PREC: tl.constexpr,
):
    i_n, i_m, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    # h, w >= 1 is validated on the host; the clamp only keeps unvalidated (compiled) calls free of UB
    h = tl.maximum(tl.load(shapes + i_b * 2).to(tl.int32), 1)
    w = tl.maximum(tl.load(shapes + i_b * 2 + 1).to(tl.int32), 1)
    n_valid = h * w
    if PACKED:
        if i_m * BLOCK_M >= n_valid:
            return
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_m = o_m < L
    m_n = o_n < D

    # ---- GEMM: x[b, rows] @ W^T, K is not a multiple of BLOCK_K for P=14 (588), hence the k mask
    p_x = x + i_b.to(tl.int64) * L * K + o_m[:, None] * K
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < K
        # [BLOCK_M, BLOCK_K]; transformers casts pixels to the weight dtype before the linear
        b_x = tl.load(p_x + o_k[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_x = b_x.to(weight.dtype.element_ty)
        # [BLOCK_K, BLOCK_N]
        b_w = tl.load(weight + o_n[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_n[None, :], other=0.0)
        if DOT_FP32:  # the interpreter's bf16 tl.dot multiplies raw bit patterns
            b_x = b_x.to(tl.float32)
            b_w = b_w.to(tl.float32)
        acc = tl.dot(b_x, b_w, acc, input_precision=MAIN_PREC)  # [BLOCK_M, BLOCK_N]

    # ---- position rows: acc += sum_i A_i @ P_i over the source rows i the tile's filters touch
    o_t = tl.minimum(o_m, L - 1)  # rows past L are not stored; keep them from widening the source range
    b_y, b_xx = _grid_coords(o_t, n_valid, w)
    c_h, inv_h, tot_h = _axis_filter(b_y, h, G, BLOCK_G)
    c_w, inv_w, tot_w = _axis_filter(b_xx, w, G, BLOCK_G)
    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < G
    # [BLOCK_M, BLOCK_G]: the column weights are the same for every source row i
    b_ww = tl.where(m_g[None, :], _tap(o_g[None, :].to(tl.float32), c_w[:, None], inv_w, tot_w[:, None]), 0.0)
    # Conservative source-row range (one extra row each side: its taps are exactly zero anyway)
    support_h = 1.0 / inv_h
    i_lo = tl.maximum(tl.min(c_h - support_h + 0.5, axis=0).to(tl.int32) - 1, 0)
    i_hi = tl.minimum(tl.max(c_h + support_h + 0.5, axis=0).to(tl.int32) + 1, G)
    for i in range(i_lo, i_hi):
        b_wh = _tap(i, c_h, inv_h, tot_h)  # [BLOCK_M]
        b_a = b_wh[:, None] * b_ww  # [BLOCK_M, BLOCK_G]
        # [BLOCK_G, BLOCK_N]
        b_p = tl.load(pos + (i * G + o_g[:, None]) * D + o_n[None, :], mask=m_g[:, None] & m_n[None, :], other=0.0).to(
            tl.float32
        )
        acc = tl.dot(b_a, b_p, acc, input_precision=POS_PREC)  # [BLOCK_M, BLOCK_N]

    acc += tl.load(bias + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    if PACKED:
        row0 = tl.load(cu_seqlens + i_b)
        o_r = row0.to(tl.int64) + o_m
        # never write past the image's L rows or the buffer, even for unvalidated (compiled) bad inputs
        m_r = m_m & (o_m < n_valid) & (o_r < total_rows)
    else:
        o_r = i_b.to(tl.int64) * L + o_m
        m_r = m_m
    tl.store(y + o_r[:, None] * D + o_n[None, :], acc.to(y.dtype.element_ty), mask=m_r[:, None] & m_n[None, :])


@triton.jit
def _pos_adjoint_tokens(
    acc,
    dy,
    i,
    t0,
    t1,
    n_valid,
    h,
    w,
    row0,
    o_n,
    m_n,
    D,
    G: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_M: tl.constexpr,
    POS_PREC: tl.constexpr,
):
    """acc[j, n] += sum_{t in [t0, t1)} Wh[y_t, i] Ww[x_t, j] dY[row0 + t, n]."""
    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < G
    for s in range(t0, t1, BLOCK_M):
        o_t = s + tl.arange(0, BLOCK_M)
        m_t = o_t < t1
        b_y, b_x = _grid_coords(o_t, n_valid, w)
        c_h, inv_h, tot_h = _axis_filter(b_y, h, G, BLOCK_G)
        c_w, inv_w, tot_w = _axis_filter(b_x, w, G, BLOCK_G)
        b_wh = tl.where(m_t, _tap(i, c_h, inv_h, tot_h), 0.0)  # [BLOCK_M]
        # [BLOCK_M, BLOCK_G]
        b_a = b_wh[:, None] * tl.where(
            m_g[None, :], _tap(o_g[None, :].to(tl.float32), c_w[:, None], inv_w, tot_w[:, None]), 0.0
        )
        # [BLOCK_M, BLOCK_N]
        b_dy = tl.load(dy + (row0 + o_t)[:, None] * D + o_n[None, :], mask=m_t[:, None] & m_n[None, :], other=0.0).to(
            tl.float32
        )
        acc = tl.dot(tl.trans(b_a), b_dy, acc, input_precision=POS_PREC)  # [BLOCK_G, BLOCK_N]
    return acc


@triton.jit
def _pos_adjoint_kernel(
    dy,  # (B, L, D) or (total, D) when PACKED
    shapes,  # (B, 2) int (h, w)
    cu_seqlens,  # (B+1,) int32, only read when PACKED
    dpos_part,  # out: (n_chunks, G*G, D) fp32, one partial per chunk of images
    B,
    L,
    D,
    IMGS_PER_PROG,
    G: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PACKED: tl.constexpr,
    POS_PREC: tl.constexpr,
):
    # One program per (source grid row i, column tile, chunk of images): the output block [G, BLOCK_N] of
    # row i stays in registers, and only tokens whose vertical filter reaches row i are read.
    i, i_n, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < D
    acc = tl.zeros([BLOCK_G, BLOCK_N], dtype=tl.float32)
    b_end = tl.minimum((i_c + 1) * IMGS_PER_PROG, B)
    for b in range(i_c * IMGS_PER_PROG, b_end):
        h = tl.maximum(tl.load(shapes + b * 2).to(tl.int32), 1)
        w = tl.maximum(tl.load(shapes + b * 2 + 1).to(tl.int32), 1)
        n_valid = tl.minimum(h * w, L)
        scale = G / h.to(tl.float32)
        support = tl.maximum(scale, 1.0)
        # output rows y whose filter reaches source row i: |i + 0.5 - scale (y + 0.5)| < support
        y_lo = tl.maximum(((i + 0.5 - support) / scale - 0.5).to(tl.int32) - 1, 0)
        y_hi = tl.minimum(((i + 0.5 + support) / scale - 0.5).to(tl.int32) + 2, h)
        t0 = tl.minimum(y_lo * w, n_valid)
        t1 = tl.minimum(y_hi * w, n_valid)
        if PACKED:
            row0 = tl.load(cu_seqlens + b).to(tl.int64)
        else:
            # b * L < B * L fits int32; neither L.to() (a launch with L == 1 makes L a constexpr int) nor b.to()
            # (an int in the interpreter)
            row0 = (b * L).to(tl.int64)
        acc = _pos_adjoint_tokens(acc, dy, i, t0, t1, n_valid, h, w, row0, o_n, m_n, D, G, BLOCK_G, BLOCK_M, POS_PREC)
        if not PACKED:
            if y_lo == 0:  # padding rows sit at (0, 0); they only reach the source rows near 0
                acc = _pos_adjoint_tokens(
                    acc, dy, i, n_valid, L, n_valid, h, w, row0, o_n, m_n, D, G, BLOCK_G, BLOCK_M, POS_PREC
                )
    o_g = tl.arange(0, BLOCK_G)
    p_out = dpos_part + (i_c.to(tl.int64) * G * G + i * G + o_g[:, None]) * D + o_n[None, :]
    tl.store(p_out, acc, mask=(o_g < G)[:, None] & m_n[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

# Launch configs, one table per kernel, keyed by GPU architecture family (kernels/_configs.py) and then by a key
# of the launch (dtype class "16bit" (bf16/fp16: tensor-core dots) or "fp32" (IEEE FMA dots): `dtype_class`).
# Rule for every entry: it compiles for every architecture of its family with no register spills (ptxas STACK
# == LOCAL == 0) and within the family's shared memory per block, under triton 3.8 and 3.9, in every variant a
# launch can specialize (kernels/aot_cases.py; tests/test_aot.py, all of them with SIGLIP2_AOT_FULL=1); among
# those, the largest tile. Throughput tuning on real GPUs is owed: no GPU has timed these.
# fwd: key (weight dtype class, aligned) -> (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages).
# "aligned": K and D multiples of 16 and 16-byte aligned pointers (NaFlex P=16: K = 768). Triton then
# vectorizes the loads and pipelines them with cp.async; 16-bit: a 128x128 tile, 3 stages of 64-wide K slices
# (96 KiB of shared memory on sm_90, 64 KiB on sm_80). Unaligned rows (P=14: K = 588) load element by element
# with a 64-bit address each, and anything larger than 64x64 spills. fp32 models get exact fp32 dots ("ieee",
# FMA, no tensor cores), whose operand fragments need 16-wide K slices to stay spill-free.
_FWD_BASE = {
    ("16bit", True): (128, 128, 64, 8, 3),
    ("16bit", False): (64, 64, 32, 4, 3),
    ("fp32", True): (64, 64, 16, 4, 2),
    ("fp32", False): (32, 64, 16, 4, 2),
}
# Per-family changes to the base table (measured):
# - sm_100 (ptxas-blackwell, triton 3.9): fp16 unaligned 64x64x32 with 4 warps and fp32 aligned 64x64x16 with 4
#   warps each spill 8 B (bf16 does not); the same tiles with 8 warps do not.
# - sm_120: fp16 aligned 128x128x64 spills 40 B under triton 3.8 (2 stages: 32 B), 128x64x64 with 3 stages 8 B
#   under 3.6 (ptxas-blackwell 12.9); 128x64x64 with 2 stages is spill-free under 3.6, 3.8 and 3.9. Unaligned
#   64x64x32 with 4 warps spills 8 B under 3.9 (fp16, and bf16 weights with fp32 pixels, at P=14's pointer
#   alignment); with 8 warps, as on sm_100, no variant spills under 3.8 or 3.9.
# - sm_80 and sm_86/89: fp16 weights with fp32 pixels (the processor's output, cast in the kernel) spill 16 B in
#   the aligned 128x128x64 tile under triton 3.9 (56 B with 2 stages); 128x64x64 with 3 stages is spill-free for
#   every weight/pixel dtype pair under 3.6, 3.8 and 3.9. sm_90 keeps 128x128x64 (spill-free there).
# "default" (unknown architectures) takes the sm_100 and sm_120 changes.
_FWD_AMPERE = {("16bit", True): (128, 64, 64, 8, 3)}
_FWD_SM100 = {("16bit", False): (64, 64, 32, 8, 3), ("fp32", True): (64, 64, 16, 8, 2)}
_FWD_SM120 = {("16bit", True): (128, 64, 64, 8, 2), ("16bit", False): (64, 64, 32, 8, 3)}
# AMD: "default"'s tiles ("amd", an unknown AMD architecture, with Triton's default options). CDNA (gfx90a, gfx942,
# gfx950) adds HIP options (kernels/_configs.py HIP_OPTION_NAMES), measured under triton 3.9 over every variant:
# 16-bit matrix_instr_nonkdim=32 (Triton's own choice: 32x32 MFMAs, 192 vs 288 MFMA instructions on gfx942 with 16,
# at the same 114-118 VGPRs: each instruction does 2x the work per operand read); fp32 dots (MFMA f32)
# 16 (58 vs 100 VGPRs on gfx942, 56 vs 88 on gfx950); waves_per_eu=2: spill-free everywhere (max 118 VGPRs).
# RDNA (gfx1100, gfx1201; 256 VGPRs per wave): the 16-bit aligned key, 128x64x64 with 8 warps, spills 1 VGPR on
# gfx1100 under triton 3.9 (fp16 weights, fp32 pixels); with 16 warps 22 under 3.8; with 8 warps every variant
# tried spills under 3.8 (128x64x32: 274-849 VGPRs, 64x64x64: 108, 1 stage: 52-184). 128x64x32 with 16 warps is
# clean under 3.6, 3.8 and 3.9 (max 168 / 233 / 172 VGPRs on gfx1100).
_FWD_AMD = {**_FWD_BASE, **_FWD_SM100, **_FWD_SM120}
_HIP_16BIT = {"matrix_instr_nonkdim": 32, "waves_per_eu": 2}
_HIP_FP32 = {"matrix_instr_nonkdim": 16, "waves_per_eu": 2}
_FWD_CDNA = {k: (*v, _HIP_16BIT if k[0] == "16bit" else _HIP_FP32) for k, v in _FWD_AMD.items()}
_FWD_RDNA = {**_FWD_AMD, ("16bit", True): (128, 64, 32, 16, 2)}
_CDNA = ("gfx90a", "gfx942", "gfx950")
FWD_CONFIGS = {
    "sm80": {**_FWD_BASE, **_FWD_AMPERE},
    "sm86": {**_FWD_BASE, **_FWD_AMPERE},
    "sm90": _FWD_BASE,
    "sm100": {**_FWD_BASE, **_FWD_SM100},
    "sm120": {**_FWD_BASE, **_FWD_SM120},
    "default": {**_FWD_BASE, **_FWD_SM100, **_FWD_SM120},
    **{f: _FWD_CDNA for f in _CDNA},
    "rdna": _FWD_RDNA,
    "amd": _FWD_AMD,
}
# adjoint: key dY dtype class -> (BLOCK_M, BLOCK_N, num_warps, num_stages). 32 tokens per step: with 64, triton
# 3.6's ptxas (12.8) caps the 16-bit kernel at 64 (sm_90) / 128 (sm_80) registers and spills a few loop-invariant
# values. fp32 with 4 warps spills 8 B on sm_90 under triton 3.8; 8 warps do not.
# sm_100: with D not a multiple of 16 (no SigLIP2 width), 32x64 spills 8 B (16-bit, 4 warps) and 16 B (fp32, 8
# warps) under triton 3.9; 32x32 tiles do not, in any variant, under 3.8 or 3.9. "default" takes them.
_ADJ_BASE = {"16bit": (32, 64, 4, 2), "fp32": (32, 64, 8, 2)}
_ADJ_SM100 = {"16bit": (32, 32, 4, 2), "fp32": (32, 32, 8, 2)}
# AMD: the sm_100 tiles; on CDNA with matrix_instr_nonkdim=16 (fp32 position dots: Triton's own choice, 56-66
# VGPRs; 32: 62-70) and no waves_per_eu hint (a memory-bound kernel: occupancy is its latency hiding).
_ADJ_AMD = _ADJ_SM100
_ADJ_CDNA = {k: (*v, {"matrix_instr_nonkdim": 16}) for k, v in _ADJ_AMD.items()}
ADJ_CONFIGS = {
    "sm80": _ADJ_BASE,
    "sm86": _ADJ_BASE,
    "sm90": _ADJ_BASE,
    "sm100": _ADJ_SM100,
    "sm120": _ADJ_BASE,
    "default": _ADJ_SM100,
    **{f: _ADJ_CDNA for f in _CDNA},
    "rdna": _ADJ_AMD,
    "amd": _ADJ_AMD,
}
check_tables("patch_embed fwd", FWD_CONFIGS)
check_tables("patch_embed adjoint", ADJ_CONFIGS)
# The CPU interpreter runs one program at a time: small blocks keep it fast. Same tuple layouts as the tables.
FWD_INTERPRET_CONFIG = (32, 32, 32, 4, 1)
ADJ_INTERPRET_CONFIG = (32, 32, 4, 1)
# Images per program in the adjoint: bounds the partial buffer to ~ADJ_MAX_CHUNKS x G*G x D fp32.
ADJ_MAX_CHUNKS = 32
# The pixel dtypes the forward kernel is compiled for besides the weight's (tests/test_aot.py compiles both):
# the processor's fp32 pixels are cast inside the kernel, anything else by the launcher.
KERNEL_PIXEL_DTYPES = (torch.float32,)
# The @triton.jit kernels the launchers start, by role (kernels/aot_cases.py compiles each of them).
KERNELS = {"fwd": _patch_embed_fwd_kernel, "adjoint": _pos_adjoint_kernel}


def block_g(G: int) -> int:
    """tl.dot needs K >= 16 and power-of-two blocks: a 4x4 table is zero-padded to 16 columns."""
    return max(16, triton.next_power_of_2(G))


def is_aligned(K, D, *tensors) -> bool:
    """The forward table's "aligned" key: K and D multiples of 16 and every pointer 16-byte aligned."""
    return K % 16 == 0 and D % 16 == 0 and all(t.data_ptr() % 16 == 0 for t in tensors)


def fwd_config(dtype: torch.dtype, aligned: bool, family: str) -> tuple[tuple, dict]:
    """((BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), HIP options: {} but on AMD)."""
    if interpreting():
        return FWD_INTERPRET_CONFIG, {}
    return split_entry(FWD_CONFIGS[family][(dtype_class(dtype), aligned)], 5)


def adj_config(dtype: torch.dtype, family: str) -> tuple[tuple, dict]:
    """((BLOCK_M, BLOCK_N, num_warps, num_stages), HIP options: {} but on AMD)."""
    if interpreting():
        return ADJ_INTERPRET_CONFIG, {}
    return split_entry(ADJ_CONFIGS[family][dtype_class(dtype)], 4)


def pos_precision(dtype: torch.dtype, family: str = "sm80") -> str:
    """tl.dot precision of the forward's position dots for parameters of `dtype`: `dot_precision`'s rule with one
    deliberate exception. The operands are fp32 whatever `dtype` (filter weights in [0, 1], table values), so
    "tf32" really rounds them: 2^-11, below bf16's output rounding (2^-9) but not below fp16's, so fp16 takes
    the 3-pass tf32 split."""
    if dtype == torch.float32:
        return dot_precision(dtype)
    tf32 = fp32_dot_precision(family)  # AMD has no TF32 (but gfx942): its split would not compile there
    return "tf32x3" if dtype == torch.float16 and tf32 == "tf32" else tf32


def adjoint_precision(dtype: torch.dtype, family: str = "sm80") -> str:
    """tl.dot precision of the adjoint for gradients of `dtype`: `dot_precision`'s rule, kept although the operands
    are fp32 (dY upcast, filter weights): the adjoint sums over the whole batch in fp32, while eager torch rounds
    each image's d pos_embed to `dtype` before summing, so tf32 is ample for 16-bit gradients."""
    return dot_precision(dtype) if dtype == torch.float32 else fp32_dot_precision(family)


def patch_embed_fwd(pixel_values, spatial_shapes, weight, bias, pos_embed, cu_seqlens=None, total=None):
    """One launch of the forward kernel: (B, L, D), or the (total, D) valid rows with `cu_seqlens`.

    `total`: sum of h*w when the caller knows it; otherwise read from cu_seqlens (one host sync on a GPU)."""
    B, L, K = pixel_values.shape
    D = weight.shape[0]
    G = math.isqrt(pos_embed.shape[0])
    x = pixel_values
    if x.dtype != weight.dtype and x.dtype not in KERNEL_PIXEL_DTYPES:
        x = x.to(weight.dtype)  # the kernel would round to weight.dtype on load all the same
    x = x.contiguous()
    # one index dtype: the kernel is compiled for int64 shapes only (the processor's dtype)
    shapes = spatial_shapes.to(torch.int64).contiguous()
    packed = cu_seqlens is not None
    if packed:  # the kernel indexes cu_seqlens with unit stride
        cu_seqlens = cu_seqlens.contiguous()
    if total is None:
        total = int(cu_seqlens[-1]) if cu_seqlens is not None else B * L
    out = new_empty((total, D) if packed else (B, L, D), weight.dtype, x.device)
    if B == 0 or total == 0:
        return out
    weight, bias, pos_embed = weight.contiguous(), bias.contiguous(), pos_embed.contiguous()
    aligned = is_aligned(K, D, x, weight, bias, pos_embed, out)
    fam = device_family(x.device)
    (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), hip = fwd_config(weight.dtype, aligned, fam)
    grid = (triton.cdiv(D, BLOCK_N), triton.cdiv(L, BLOCK_M), B)
    _patch_embed_fwd_kernel[grid](
        x=x,
        weight=weight,
        bias=bias,
        pos=pos_embed,
        shapes=shapes,
        cu_seqlens=cu_seqlens if packed else shapes,  # read only when PACKED
        y=out,
        L=L,
        K=K,
        D=D,
        total_rows=total,
        G=G,
        BLOCK_G=block_g(G),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        PACKED=packed,
        DOT_FP32=dot_fp32(),
        MAIN_PREC=dot_precision(weight.dtype),
        POS_PREC=pos_precision(weight.dtype, fam),
        **launch_kwargs(fam, num_warps, num_stages, hip),
    )
    return out


def pos_embed_adjoint(grad_out, spatial_shapes, L, G, cu_seqlens=None, out_dtype=torch.float32):
    """d pos_embed (G*G, D): each image's resize adjoint applied to its rows of `grad_out`, summed over B."""
    D = grad_out.shape[-1]
    B = spatial_shapes.shape[0]
    shapes = spatial_shapes.to(torch.int64).contiguous()
    packed = cu_seqlens is not None
    if packed:  # the kernel indexes cu_seqlens with unit stride
        cu_seqlens = cu_seqlens.contiguous()
    if B == 0:
        return torch.zeros(G * G, D, dtype=out_dtype, device=grad_out.device)
    fam = device_family(grad_out.device)
    (BLOCK_M, BLOCK_N, num_warps, num_stages), hip = adj_config(grad_out.dtype, fam)
    imgs = triton.cdiv(B, ADJ_MAX_CHUNKS)
    n_chunks = triton.cdiv(B, imgs)
    part = new_empty((n_chunks, G * G, D), torch.float32, grad_out.device)
    _pos_adjoint_kernel[(G, triton.cdiv(D, BLOCK_N), n_chunks)](
        dy=grad_out.contiguous(),
        shapes=shapes,
        cu_seqlens=cu_seqlens if packed else shapes,
        dpos_part=part,
        B=B,
        L=L,
        D=D,
        IMGS_PER_PROG=imgs,
        G=G,
        BLOCK_G=block_g(G),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        PACKED=packed,
        POS_PREC=adjoint_precision(grad_out.dtype, fam),
        **launch_kwargs(fam, num_warps, num_stages, hip),
    )
    return part.sum(0).to(out_dtype)


def _unpack_rows(grad_out, spatial_shapes, cu_seqlens, L):
    """(total, D) packed rows -> (B, L, D) with zeros at padding, by a device-side gather (no host sync)."""
    B = spatial_shapes.shape[0]
    n_valid = (spatial_shapes[:, 0] * spatial_shapes[:, 1]).to(torch.int64)
    o_t = torch.arange(L, device=grad_out.device)
    idx = torch.where(
        o_t[None, :] < n_valid[:, None], cu_seqlens[:-1, None].to(torch.int64) + o_t[None, :], grad_out.shape[0]
    )  # the extra zero row
    padded = torch.cat([grad_out, grad_out.new_zeros(1, grad_out.shape[1])])
    return padded[idx.reshape(-1)].reshape(B, L, -1)


def patch_embed_bwd(grad_out, pixel_values, spatial_shapes, weight, pos_embed, cu_seqlens, needs):
    """needs: which of (pixel_values, weight, bias, pos_embed) want a gradient. Only d pos_embed runs a Triton
    kernel (`pos_embed_adjoint`); dX and dW are torch matmuls and dbias a torch sum over the unpacked rows."""
    B, L, K = pixel_values.shape
    G = math.isqrt(pos_embed.shape[0])
    grad_out = grad_out.contiguous()
    dy = grad_out if cu_seqlens is None else _unpack_rows(grad_out, spatial_shapes, cu_seqlens, L)
    dy2 = dy.reshape(B * L, -1)
    dx = dw = db = dpos = None
    if needs[0]:
        dx = (dy2 @ weight).reshape(B, L, K).to(pixel_values.dtype)
    if needs[1]:
        dw = dy2.t() @ pixel_values.reshape(B * L, K).to(weight.dtype)
    if needs[2]:
        db = dy2.sum(0, dtype=torch.float32).to(weight.dtype)
    if needs[3]:
        dpos = pos_embed_adjoint(grad_out, spatial_shapes, L, G, cu_seqlens, pos_embed.dtype)
    return dx, dw, db, dpos


# ----------------------------------------------------------------------------------------------
# torch.library registration (autograd + fake impls, so torch.compile(fullgraph=True) traces through)
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("siglip2::naflex_patch_embed", mutates_args=())
def patch_embed_op(
    pixel_values: torch.Tensor,
    spatial_shapes: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pos_embed: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    total: int | None = None,
) -> torch.Tensor:
    return patch_embed_fwd(pixel_values, spatial_shapes, weight, bias, pos_embed, cu_seqlens, total)


@patch_embed_op.register_fake
def _(pixel_values, spatial_shapes, weight, bias, pos_embed, cu_seqlens=None, total=None):
    B, L, _ = pixel_values.shape
    D = weight.shape[0]
    if cu_seqlens is None:
        return weight.new_empty(B, L, D)
    if total is None:
        total = torch.library.get_ctx().new_dynamic_size()  # sum of h*w is data-dependent
    return weight.new_empty(total, D)


@torch.library.custom_op("siglip2::naflex_patch_embed_backward", mutates_args=())
def patch_embed_backward_op(
    grad_out: torch.Tensor,
    pixel_values: torch.Tensor,
    spatial_shapes: torch.Tensor,
    weight: torch.Tensor,
    pos_embed: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    needs: list[bool],
) -> list[torch.Tensor]:
    grads = patch_embed_bwd(grad_out, pixel_values, spatial_shapes, weight, pos_embed, cu_seqlens, needs)
    # custom ops cannot return None: give empty tensors for the gradients nobody asked for
    return [g if g is not None else pixel_values.new_empty(0) for g in grads]


@patch_embed_backward_op.register_fake
def _(grad_out, pixel_values, spatial_shapes, weight, pos_embed, cu_seqlens, needs):
    # the real gradients are fresh contiguous tensors whatever the inputs' strides
    like = (
        (pixel_values.shape, pixel_values.dtype),
        (weight.shape, weight.dtype),
        ((weight.shape[0],), weight.dtype),
        (pos_embed.shape, pos_embed.dtype),
    )
    return [pixel_values.new_empty(s, dtype=dt) if n else pixel_values.new_empty(0) for (s, dt), n in zip(like, needs)]


def _setup_context(ctx, inputs, output):
    pixel_values, spatial_shapes, weight, _bias, pos_embed, cu_seqlens, _total = inputs
    ctx.save_for_backward(pixel_values, spatial_shapes, weight, pos_embed, cu_seqlens)


def _backward(ctx, grad_out):
    pixel_values, spatial_shapes, weight, pos_embed, cu_seqlens = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:1]) + list(ctx.needs_input_grad[2:5])
    grads = patch_embed_backward_op(grad_out, pixel_values, spatial_shapes, weight, pos_embed, cu_seqlens, needs)
    dx, dw, db, dpos = (g if n else None for g, n in zip(grads, needs))
    return dx, None, dw, db, dpos, None, None


torch.library.register_autograd("siglip2::naflex_patch_embed", _backward, setup_context=_setup_context)
