"""Triton FlashAttention-2 for packed (varlen) and padded non-causal attention, forward and backward.

One set of kernels serves both layouts through the IS_VARLEN constexpr (flash-linear-attention idiom):
varlen reads (total, H, D) with int32 cu_seqlens; padded reads (B, H, L, D) strides plus an optional
per-key bool mask (any pattern, not only a prefix). Softmax statistics are fp32 in base 2: the kernels
fold log2(e) into the scale and use exp2, and the saved LSE is log2-sum-exp2 (internal, never returned).
A query with no visible key has LSE = +inf, so the output and every gradient it touches are exactly 0.
Loops (FlashAttention's AMD Triton backend / Triton's fused-attention tutorial): full key (dQ, forward) or query
(dK/dV) blocks run through a block helper with APPLY_MASK=False, which loads without masks and scales the scores
with one FFMA (`s * scale_log2e - m`, m the scaled row max); only the sequence's last, partial block, and every
block of the key-mask path, take APPLY_MASK=True. bench/sass_report.py counts what these loops compile to.
The launcher passes ALIGN (`_stride_align`): when every stride is a multiple of 16 bytes, `_head_base` hands that
to Triton's alignment analysis, so split head dims (D 72: head offsets i_h * 72) load in 16-byte vectors too.
Head dims that are not a power of two are split into a power-of-two main tile plus a >=16-wide tail
(72 = 64 + 16, 96 = 64 + 32; dims <= 64 pad to 32 or 64, so 40 runs in a 64 tile: see `head_dim_split`),
loaded and stored through one pair of helpers (`_ptrs2`, `_load2`, `_store2`).
Backward: delta = rowsum(dO * O), then a dK/dV kernel looping over query blocks and a dQ kernel looping
over key blocks, both recomputing P from the LSE (no atomics, no O(L^2) memory).
Launchers: `attention_fwd`, `attention_bwd`; `attention_op` is the torch.library custom op
(`siglip2::attention_fwd`, differentiable) that kernels/attention.py calls.
"""

# pyright: reportArgumentType=false, reportCallIssue=false, reportAttributeAccessIssue=false
# pyright: reportIndexIssue=false, reportPossiblyUnboundVariable=false, reportOperatorIssue=false
# (file-level, for the @triton.jit bodies: tl.constexpr parameters take Python literals, block tensors are indexed
# with [:, None], names are bound under `if CONSTEXPR:` branches, and `kernel[grid](..., num_warps=)` adds launch
# options; pyright cannot model Triton's language, so these rules give only false findings here. The Optional
# checks stay on for the launchers.)
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from ._configs import INTERPRETER_FAMILY, check_tables, device_family, launch_kwargs, split_entry
from ._utils import dot_fp32, dot_precision, new_empty

LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------
# Helpers: dots, casts, tiles split along the head dim
# ----------------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    # the 3.9 interpreter multiplies raw bf16 bit patterns in tl.dot: compute in fp32 there
    if DOT_FP32:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        c = tl.dot(a, b, acc, input_precision=PRECISION)
    return c


@triton.jit
def _cast(x, dtype: tl.constexpr, DOT_FP32: tl.constexpr):
    """fp32 -> `dtype`, rounding to nearest even. The 3.9 interpreter's fp32 -> bf16 cast truncates, so when
    interpreting the rounding is done on the fp32 bits first (the cast then only drops zeros); compiled kernels
    use the hardware's rounding cast."""
    if DOT_FP32 and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _ptrs(base, rows, s_row, C0: tl.constexpr, BLOCK_C: tl.constexpr, TRANS: tl.constexpr):
    """Pointers to columns C0 .. C0 + BLOCK_C of `rows`: [rows, BLOCK_C], or [BLOCK_C, rows] with TRANS."""
    cols = C0 + tl.arange(0, BLOCK_C)
    if TRANS:
        p = base + rows[None, :] * s_row + cols[:, None]
    else:
        p = base + rows[:, None] * s_row + cols[None, :]
    return p


@triton.jit
def _ptrs2(base, rows, s_row, BLOCK_D: tl.constexpr, BLOCK_DT: tl.constexpr, TRANS: tl.constexpr):
    """(main, tail) pointer tiles of a head-dim split; without a tail (BLOCK_DT == 0) the tail is the main."""
    p = _ptrs(base, rows, s_row, 0, BLOCK_D, TRANS)
    pt = p
    if BLOCK_DT > 0:
        pt = _ptrs(base, rows, s_row, BLOCK_D, BLOCK_DT, TRANS)
    return p, pt


@triton.jit
def _load(
    ptrs,
    row_ok,
    C0: tl.constexpr,
    BLOCK_C: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASK_ROWS: tl.constexpr,
    TRANS: tl.constexpr,
):
    """A tile from `_ptrs`, zero past the head dim (only when the tile reaches past it) and, with MASK_ROWS, in
    rows where `row_ok` is False; a full block (MASK_ROWS False, the tile inside the head dim) loads unmasked."""
    col_ok = (C0 + tl.arange(0, BLOCK_C)) < HEAD_DIM
    if TRANS:
        col_ok = col_ok[:, None]
    else:
        col_ok = col_ok[None, :]
    if MASK_ROWS:
        if TRANS:
            row_ok = row_ok[None, :]
        else:
            row_ok = row_ok[:, None]
        if C0 + BLOCK_C > HEAD_DIM:
            x = tl.load(ptrs, mask=row_ok & col_ok, other=0.0)
        else:
            x = tl.load(ptrs, mask=row_ok, other=0.0)
    else:
        if C0 + BLOCK_C > HEAD_DIM:
            x = tl.load(ptrs, mask=col_ok, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _load2(
    p,
    pt,
    row_ok,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    MASK_ROWS: tl.constexpr,
    TRANS: tl.constexpr,
):
    """(main, tail) tiles from `_ptrs2`'s pointers; without a tail the tail is the main tile (never used)."""
    x = _load(p, row_ok, 0, BLOCK_D, HEAD_DIM, MASK_ROWS, TRANS)
    xt = x
    if BLOCK_DT > 0:
        xt = _load(pt, row_ok, BLOCK_D, BLOCK_DT, HEAD_DIM, MASK_ROWS, TRANS)
    return x, xt


@triton.jit
def _store2(
    base,
    rows,
    s_row,
    row_ok,
    x,
    xt,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Store the fp32 (main, tail) tiles of `rows` in base's dtype, rows where `row_ok` and columns < HEAD_DIM."""
    dt = base.dtype.element_ty
    cols = tl.arange(0, BLOCK_D)
    tl.store(
        base + rows[:, None] * s_row + cols[None, :],
        _cast(x, dt, DOT_FP32),
        mask=row_ok[:, None] & (cols < HEAD_DIM)[None, :],
    )
    if BLOCK_DT > 0:
        cols = BLOCK_D + tl.arange(0, BLOCK_DT)
        tl.store(
            base + rows[:, None] * s_row + cols[None, :],
            _cast(xt, dt, DOT_FP32),
            mask=row_ok[:, None] & (cols < HEAD_DIM)[None, :],
        )


@triton.jit
def _seq_bounds(cu_seqlens_q, cu_seqlens_k, i_b, L_Q, L_K, IS_VARLEN: tl.constexpr):
    """(first query row, #queries, first key row, #keys) of sequence i_b, rows counted in the token dim."""
    if IS_VARLEN:
        bos_q = tl.load(cu_seqlens_q + i_b).to(tl.int64)
        bos_k = tl.load(cu_seqlens_k + i_b).to(tl.int64)
        T_q = (tl.load(cu_seqlens_q + i_b + 1) - bos_q).to(tl.int32)
        T_k = (tl.load(cu_seqlens_k + i_b + 1) - bos_k).to(tl.int32)
    else:
        bos_q = tl.zeros([], dtype=tl.int64)
        bos_k = tl.zeros([], dtype=tl.int64)
        T_q = L_Q
        T_k = L_K
    return bos_q, T_q, bos_k, T_k


@triton.jit
def _block_at(base, start, s_row, o_r, SPLIT: tl.constexpr):
    """(base pointer, row offsets) addressing rows start + o_r of `base`. Unsplit head dims load in 16-byte
    vectors: the block's base pointer moves and the few row offsets stay loop-invariant. With a tail (SPLIT) the
    loads are narrower and loop-invariant offsets for every element spill (D 72 on sm_80), so they are
    recomputed per block from the absolute rows."""
    if SPLIT:
        b, r = base, start + o_r
    else:
        b, r = base + start * s_row, o_r
    return b, r


@triton.jit
def _head_base(base, i_b64, s_b, bos, s_t, i_h, s_h, ALIGN: tl.constexpr):
    """`base` moved to (batch i_b64, token bos, head i_h), and the token (row) stride.
    ALIGN > 1: the launcher checked that every stride is a multiple of ALIGN elements (16 bytes). `s // ALIGN *
    ALIGN` (exact then) hands that to Triton's alignment analysis, so the rows of head dims such as 72 load as
    16-byte vectors; without it a stride like s_h = 72 (a multiple of 8, not of 16, so the launch does not
    specialize it) makes every load 2 bytes wide and the D 72 loops spill. tl.multiple_of on a scalar argument
    does not reach the analysis under triton 3.6-3.9 (checked in PTX)."""
    if ALIGN > 1:
        s_b = s_b // ALIGN * ALIGN
        s_t = s_t // ALIGN * ALIGN
        s_h = s_h // ALIGN * ALIGN
    return base + i_b64 * s_b + bos * s_t + i_h * s_h, s_t


@triton.jit
def _key_ok(o_n, T_k, key_mask, HAS_MASK: tl.constexpr):
    """Keys of the block that exist and, with a key mask, are not masked out."""
    m_n = o_n < T_k
    if HAS_MASK:
        m_n = m_n & (tl.load(key_mask + o_n, mask=m_n, other=0) != 0)
    return m_n


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _fwd_block(
    b_q,
    b_qt,
    k,
    v,
    o_n,
    s_kt,
    s_vt,
    m_n,
    b_m,
    b_l,
    b_acc,
    b_acct,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    APPLY_MASK: tl.constexpr,
    HAS_MASK: tl.constexpr,
    NEG_SCALE: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One key block of the online softmax: keys `o_n` (0 .. BLOCK_N) of the block starting at `k`, `v`.
    m_n (keys that count) is read only with APPLY_MASK."""
    p_kT, p_kTt = _ptrs2(k, o_n, s_kt, BLOCK_D, BLOCK_DT, True)
    b_kT, b_kTt = _load2(p_kT, p_kTt, m_n, HEAD_DIM, BLOCK_D, BLOCK_DT, APPLY_MASK, True)
    # [BLOCK_M, BLOCK_N]
    b_s = _dot(b_q, b_kT, None, DOT_FP32, PRECISION)
    if BLOCK_DT > 0:
        b_s = _dot(b_qt, b_kTt, b_s, DOT_FP32, PRECISION)
    if APPLY_MASK:
        b_s = tl.where(m_n[None, :], b_s * qk_scale, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        if HAS_MASK:
            # a row whose keys are all masked so far keeps an -inf max: pivot at 0 so exp2 gives 0, not NaN.
            # Without a key mask the last block holds a key, so its max is finite.
            b_m_new = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_p = tl.math.exp2(b_s - b_m_new[:, None])
    else:
        # the scaled row max from the unscaled one (its min for a negative scale): one FFMA per score below
        if NEG_SCALE:
            b_m_new = tl.maximum(b_m, tl.min(b_s, 1) * qk_scale)
        else:
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1) * qk_scale)
        b_p = tl.math.exp2(b_s * qk_scale - b_m_new[:, None])
    # [BLOCK_M]
    b_alpha = tl.math.exp2(b_m - b_m_new)
    b_l = b_l * b_alpha + tl.sum(b_p, 1)
    b_p = _cast(b_p, v.dtype.element_ty, DOT_FP32)
    p_v, p_vt = _ptrs2(v, o_n, s_vt, BLOCK_D, BLOCK_DT, False)
    b_v, b_vt = _load2(p_v, p_vt, m_n, HEAD_DIM, BLOCK_D, BLOCK_DT, APPLY_MASK, False)
    # [BLOCK_M, BLOCK_D (+ BLOCK_DT)]
    b_acc = _dot(b_p, b_v, b_acc * b_alpha[:, None], DOT_FP32, PRECISION)
    if BLOCK_DT > 0:
        b_acct = _dot(b_p, b_vt, b_acct * b_alpha[:, None], DOT_FP32, PRECISION)
    return b_m_new, b_l, b_acc, b_acct


@triton.jit
def _attn_fwd_kernel(
    q,
    k,
    v,
    o,
    lse,
    cu_seqlens_q,
    cu_seqlens_k,
    key_mask,
    s_qb,
    s_qt,
    s_qh,
    s_kb,
    s_kt,
    s_kh,
    s_vb,
    s_vt,
    s_vh,
    s_ob,
    s_ot,
    s_oh,
    s_lb,
    s_lh,
    s_mb,
    L_Q,
    L_K,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    NEG_SCALE: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,
):
    i_m, i_b, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos_q, T_q, bos_k, T_k = _seq_bounds(cu_seqlens_q, cu_seqlens_k, i_b, L_Q, L_K, IS_VARLEN)
    if i_m * BLOCK_M >= T_q:
        return
    i_b64 = i_b.to(tl.int64)
    q, s_qt = _head_base(q, i_b64, s_qb, bos_q, s_qt, i_h, s_qh, ALIGN)
    k, s_kt = _head_base(k, i_b64, s_kb, bos_k, s_kt, i_h, s_kh, ALIGN)
    v, s_vt = _head_base(v, i_b64, s_vb, bos_k, s_vt, i_h, s_vh, ALIGN)
    o, s_ot = _head_base(o, i_b64, s_ob, bos_q, s_ot, i_h, s_oh, ALIGN)
    lse += i_b64 * s_lb + i_h * s_lh + bos_q
    key_mask += i_b64 * s_mb

    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < T_q
    o_n = tl.arange(0, BLOCK_N)
    # [BLOCK_M, BLOCK_D], [BLOCK_M, BLOCK_DT]
    p_q, p_qt = _ptrs2(q, o_m, s_qt, BLOCK_D, BLOCK_DT, False)
    b_q, b_qt = _load2(p_q, p_qt, m_m, HEAD_DIM, BLOCK_D, BLOCK_DT, True, False)
    # each block addresses its keys and values through `_block_at`
    b_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    b_acct = tl.zeros([BLOCK_M, BLOCK_DT if BLOCK_DT > 0 else 1], dtype=tl.float32)
    b_m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BLOCK_M], dtype=tl.float32)

    if HAS_MASK:
        # any key may be masked: every block takes the masked path
        for i_n in range(0, tl.cdiv(T_k, BLOCK_N)):
            m_n = _key_ok(i_n * BLOCK_N + o_n, T_k, key_mask, True)
            kb, rows = _block_at(k, i_n * BLOCK_N, s_kt, o_n, BLOCK_DT > 0)
            vb, _ = _block_at(v, i_n * BLOCK_N, s_vt, o_n, BLOCK_DT > 0)
            b_m, b_l, b_acc, b_acct = _fwd_block(
                b_q,
                b_qt,
                kb,
                vb,
                rows,
                s_kt,
                s_vt,
                m_n,
                b_m,
                b_l,
                b_acc,
                b_acct,
                qk_scale,
                HEAD_DIM,
                BLOCK_D,
                BLOCK_DT,
                True,
                True,
                NEG_SCALE,
                DOT_FP32,
                PRECISION,
            )
    else:
        n_full = T_k // BLOCK_N
        for i_n in range(0, n_full):
            kb, rows = _block_at(k, i_n * BLOCK_N, s_kt, o_n, BLOCK_DT > 0)
            vb, _ = _block_at(v, i_n * BLOCK_N, s_vt, o_n, BLOCK_DT > 0)
            b_m, b_l, b_acc, b_acct = _fwd_block(
                b_q,
                b_qt,
                kb,
                vb,
                rows,
                s_kt,
                s_vt,
                None,
                b_m,
                b_l,
                b_acc,
                b_acct,
                qk_scale,
                HEAD_DIM,
                BLOCK_D,
                BLOCK_DT,
                False,
                False,
                NEG_SCALE,
                DOT_FP32,
                PRECISION,
            )
        if n_full * BLOCK_N < T_k:  # the partial last block
            m_n = _key_ok(n_full * BLOCK_N + o_n, T_k, key_mask, False)
            kb, rows = _block_at(k, n_full * BLOCK_N, s_kt, o_n, BLOCK_DT > 0)
            vb, _ = _block_at(v, n_full * BLOCK_N, s_vt, o_n, BLOCK_DT > 0)
            b_m, b_l, b_acc, b_acct = _fwd_block(
                b_q,
                b_qt,
                kb,
                vb,
                rows,
                s_kt,
                s_vt,
                m_n,
                b_m,
                b_l,
                b_acc,
                b_acct,
                qk_scale,
                HEAD_DIM,
                BLOCK_D,
                BLOCK_DT,
                True,
                False,
                NEG_SCALE,
                DOT_FP32,
                PRECISION,
            )

    # a query with no visible key has l == 0: output exactly 0 and LSE = +inf (P = 0 in the backward)
    b_has = b_l > 0
    b_inv = tl.where(b_has, 1.0 / tl.where(b_has, b_l, 1.0), 0.0)
    tl.store(lse + o_m, tl.where(b_has, b_m + tl.math.log2(tl.where(b_has, b_l, 1.0)), float("inf")), mask=m_m)
    _store2(o, o_m, s_ot, m_m, b_acc * b_inv[:, None], b_acct * b_inv[:, None], HEAD_DIM, BLOCK_D, BLOCK_DT, DOT_FP32)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _attn_bwd_preprocess_kernel(
    o,
    do,
    delta,
    cu_seqlens_q,
    s_ob,
    s_ot,
    s_oh,
    s_db,
    s_dt,
    s_dh,
    s_lb,
    s_lh,
    L_Q,
    HEAD_DIM: tl.constexpr,
    BLOCK_DP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    ALIGN: tl.constexpr,
):
    i_m, i_b, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos_q, T_q, _, _ = _seq_bounds(cu_seqlens_q, cu_seqlens_q, i_b, L_Q, L_Q, IS_VARLEN)
    if i_m * BLOCK_M >= T_q:
        return
    i_b64 = i_b.to(tl.int64)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_DP)
    m_md = (o_m < T_q)[:, None] & (o_d < HEAD_DIM)[None, :]
    # [BLOCK_M, BLOCK_DP]
    o, s_ot = _head_base(o, i_b64, s_ob, bos_q, s_ot, i_h, s_oh, ALIGN)
    do, s_dt = _head_base(do, i_b64, s_db, bos_q, s_dt, i_h, s_dh, ALIGN)
    b_o = tl.load(o + o_m[:, None] * s_ot + o_d[None, :], mask=m_md, other=0.0)
    b_do = tl.load(do + o_m[:, None] * s_dt + o_d[None, :], mask=m_md, other=0.0)
    # [BLOCK_M]
    tl.store(
        delta + i_b64 * s_lb + i_h * s_lh + bos_q + o_m,
        tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), 1),
        mask=o_m < T_q,
    )


@triton.jit
def _dkdv_block(
    b_k,
    b_kt,
    b_v,
    b_vt,
    q,
    do,
    lse,
    delta,
    o_m,
    s_qt,
    s_dt,
    m_m,
    m_kv,
    b_dk,
    b_dkt,
    b_dv,
    b_dvt,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    APPLY_MASK: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One query block of dK/dV: queries `o_m` (0 .. BLOCK_M) of the block starting at q, do, lse, delta. With
    APPLY_MASK, rows past the sequence (m_m False) read q = dO = 0 and LSE = +inf, so their P is exactly 0."""
    p_q, p_qt = _ptrs2(q, o_m, s_qt, BLOCK_D, BLOCK_DT, False)
    p_do, p_dot = _ptrs2(do, o_m, s_dt, BLOCK_D, BLOCK_DT, False)
    b_q, b_qt = _load2(p_q, p_qt, m_m, HEAD_DIM, BLOCK_D, BLOCK_DT, APPLY_MASK, False)
    b_do, b_dot = _load2(p_do, p_dot, m_m, HEAD_DIM, BLOCK_D, BLOCK_DT, APPLY_MASK, False)
    if APPLY_MASK:
        b_lse = tl.load(lse + o_m, mask=m_m, other=float("inf"))
        b_delta = tl.load(delta + o_m, mask=m_m, other=0.0)
    else:
        b_lse = tl.load(lse + o_m)
        b_delta = tl.load(delta + o_m)
    # [BLOCK_N, BLOCK_M]
    b_sT = _dot(b_k, tl.trans(b_q), None, DOT_FP32, PRECISION)
    b_dpT = _dot(b_v, tl.trans(b_do), None, DOT_FP32, PRECISION)
    if BLOCK_DT > 0:
        b_sT = _dot(b_kt, tl.trans(b_qt), b_sT, DOT_FP32, PRECISION)
        b_dpT = _dot(b_vt, tl.trans(b_dot), b_dpT, DOT_FP32, PRECISION)
    b_pT = tl.math.exp2(b_sT * qk_scale - b_lse[None, :])
    if HAS_MASK:  # masked keys (rows of the held block) get P = 0
        b_pT = tl.where(m_kv[:, None], b_pT, 0.0)
    b_dsT = _cast(b_pT * (b_dpT - b_delta[None, :]), q.dtype.element_ty, DOT_FP32)
    b_pT = _cast(b_pT, do.dtype.element_ty, DOT_FP32)
    # [BLOCK_N, BLOCK_D (+ BLOCK_DT)]
    b_dv = _dot(b_pT, b_do, b_dv, DOT_FP32, PRECISION)
    b_dk = _dot(b_dsT, b_q, b_dk, DOT_FP32, PRECISION)
    if BLOCK_DT > 0:
        b_dvt = _dot(b_pT, b_dot, b_dvt, DOT_FP32, PRECISION)
        b_dkt = _dot(b_dsT, b_qt, b_dkt, DOT_FP32, PRECISION)
    return b_dk, b_dkt, b_dv, b_dvt


@triton.jit
def _attn_bwd_dkdv_kernel(
    q,
    k,
    v,
    do,
    lse,
    delta,
    dk,
    dv,
    cu_seqlens_q,
    cu_seqlens_k,
    key_mask,
    s_qb,
    s_qt,
    s_qh,
    s_kb,
    s_kt,
    s_kh,
    s_vb,
    s_vt,
    s_vh,
    s_db,
    s_dt,
    s_dh,
    s_dkb,
    s_dkt,
    s_dkh,
    s_dvb,
    s_dvt,
    s_dvh,
    s_lb,
    s_lh,
    s_mb,
    L_Q,
    L_K,
    qk_scale,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,
):
    i_n, i_b, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos_q, T_q, bos_k, T_k = _seq_bounds(cu_seqlens_q, cu_seqlens_k, i_b, L_Q, L_K, IS_VARLEN)
    if i_n * BLOCK_N >= T_k:
        return
    i_b64 = i_b.to(tl.int64)
    q, s_qt = _head_base(q, i_b64, s_qb, bos_q, s_qt, i_h, s_qh, ALIGN)
    do, s_dt = _head_base(do, i_b64, s_db, bos_q, s_dt, i_h, s_dh, ALIGN)
    k, s_kt = _head_base(k, i_b64, s_kb, bos_k, s_kt, i_h, s_kh, ALIGN)
    v, s_vt = _head_base(v, i_b64, s_vb, bos_k, s_vt, i_h, s_vh, ALIGN)
    dk, s_dkt = _head_base(dk, i_b64, s_dkb, bos_k, s_dkt, i_h, s_dkh, ALIGN)
    dv, s_dvt = _head_base(dv, i_b64, s_dvb, bos_k, s_dvt, i_h, s_dvh, ALIGN)
    lse += i_b64 * s_lb + i_h * s_lh + bos_q
    delta += i_b64 * s_lb + i_h * s_lh + bos_q

    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < T_k
    o_m = tl.arange(0, BLOCK_M)
    # [BLOCK_N, BLOCK_D], [BLOCK_N, BLOCK_DT]
    p_k, p_kt = _ptrs2(k, o_n, s_kt, BLOCK_D, BLOCK_DT, False)
    p_v, p_vt = _ptrs2(v, o_n, s_vt, BLOCK_D, BLOCK_DT, False)
    b_k, b_kt = _load2(p_k, p_kt, m_n, HEAD_DIM, BLOCK_D, BLOCK_DT, True, False)
    b_v, b_vt = _load2(p_v, p_vt, m_n, HEAD_DIM, BLOCK_D, BLOCK_DT, True, False)
    b_dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    b_dkt = tl.zeros([BLOCK_N, BLOCK_DT if BLOCK_DT > 0 else 1], dtype=tl.float32)
    b_dvt = tl.zeros([BLOCK_N, BLOCK_DT if BLOCK_DT > 0 else 1], dtype=tl.float32)
    m_kv = _key_ok(o_n, T_k, key_mask + i_b64 * s_mb, HAS_MASK)
    # each block addresses its queries, output gradients and statistics through `_block_at`
    m_full = T_q // BLOCK_M
    for i_m in range(0, m_full):
        qb, rows = _block_at(q, i_m * BLOCK_M, s_qt, o_m, BLOCK_DT > 0)
        dob, _ = _block_at(do, i_m * BLOCK_M, s_dt, o_m, BLOCK_DT > 0)
        lb, _ = _block_at(lse, i_m * BLOCK_M, 1, o_m, BLOCK_DT > 0)
        db, _ = _block_at(delta, i_m * BLOCK_M, 1, o_m, BLOCK_DT > 0)
        b_dk, b_dkt, b_dv, b_dvt = _dkdv_block(
            b_k,
            b_kt,
            b_v,
            b_vt,
            qb,
            dob,
            lb,
            db,
            rows,
            s_qt,
            s_dt,
            None,
            m_kv,
            b_dk,
            b_dkt,
            b_dv,
            b_dvt,
            qk_scale,
            HEAD_DIM,
            BLOCK_D,
            BLOCK_DT,
            False,
            HAS_MASK,
            DOT_FP32,
            PRECISION,
        )
    if m_full * BLOCK_M < T_q:  # the partial last block
        qb, rows = _block_at(q, m_full * BLOCK_M, s_qt, o_m, BLOCK_DT > 0)
        dob, _ = _block_at(do, m_full * BLOCK_M, s_dt, o_m, BLOCK_DT > 0)
        lb, _ = _block_at(lse, m_full * BLOCK_M, 1, o_m, BLOCK_DT > 0)
        db, _ = _block_at(delta, m_full * BLOCK_M, 1, o_m, BLOCK_DT > 0)
        b_dk, b_dkt, b_dv, b_dvt = _dkdv_block(
            b_k,
            b_kt,
            b_v,
            b_vt,
            qb,
            dob,
            lb,
            db,
            rows,
            s_qt,
            s_dt,
            m_full * BLOCK_M + o_m < T_q,
            m_kv,
            b_dk,
            b_dkt,
            b_dv,
            b_dvt,
            qk_scale,
            HEAD_DIM,
            BLOCK_D,
            BLOCK_DT,
            True,
            HAS_MASK,
            DOT_FP32,
            PRECISION,
        )

    _store2(dk, o_n, s_dkt, m_n, b_dk * sm_scale, b_dkt * sm_scale, HEAD_DIM, BLOCK_D, BLOCK_DT, DOT_FP32)
    _store2(dv, o_n, s_dvt, m_n, b_dv, b_dvt, HEAD_DIM, BLOCK_D, BLOCK_DT, DOT_FP32)


@triton.jit
def _dq_block(
    b_q,
    b_qt,
    b_do,
    b_dot,
    b_lse,
    b_delta,
    k,
    v,
    o_n,
    s_kt,
    s_vt,
    m_n,
    b_dq,
    b_dqt,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    APPLY_MASK: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One key block of dQ: keys `o_n` (0 .. BLOCK_N) of the block starting at k, v. With APPLY_MASK, keys where
    m_n is False get P = 0 (they read as 0, a finite score)."""
    p_kT, p_kTt = _ptrs2(k, o_n, s_kt, BLOCK_D, BLOCK_DT, True)
    p_vT, p_vTt = _ptrs2(v, o_n, s_vt, BLOCK_D, BLOCK_DT, True)
    b_kT, b_kTt = _load2(p_kT, p_kTt, m_n, HEAD_DIM, BLOCK_D, BLOCK_DT, APPLY_MASK, True)
    b_vT, b_vTt = _load2(p_vT, p_vTt, m_n, HEAD_DIM, BLOCK_D, BLOCK_DT, APPLY_MASK, True)
    # [BLOCK_M, BLOCK_N]
    b_s = _dot(b_q, b_kT, None, DOT_FP32, PRECISION)
    b_dp = _dot(b_do, b_vT, None, DOT_FP32, PRECISION)
    if BLOCK_DT > 0:
        b_s = _dot(b_qt, b_kTt, b_s, DOT_FP32, PRECISION)
        b_dp = _dot(b_dot, b_vTt, b_dp, DOT_FP32, PRECISION)
    b_p = tl.math.exp2(b_s * qk_scale - b_lse[:, None])
    if APPLY_MASK:
        b_p = tl.where(m_n[None, :], b_p, 0.0)
    b_ds = _cast(b_p * (b_dp - b_delta[:, None]), k.dtype.element_ty, DOT_FP32)
    # [BLOCK_M, BLOCK_D (+ BLOCK_DT)]
    b_dq = _dot(b_ds, tl.trans(b_kT), b_dq, DOT_FP32, PRECISION)
    if BLOCK_DT > 0:
        b_dqt = _dot(b_ds, tl.trans(b_kTt), b_dqt, DOT_FP32, PRECISION)
    return b_dq, b_dqt


@triton.jit
def _attn_bwd_dq_kernel(
    q,
    k,
    v,
    do,
    lse,
    delta,
    dq,
    cu_seqlens_q,
    cu_seqlens_k,
    key_mask,
    s_qb,
    s_qt,
    s_qh,
    s_kb,
    s_kt,
    s_kh,
    s_vb,
    s_vt,
    s_vh,
    s_db,
    s_dt,
    s_dh,
    s_dqb,
    s_dqt,
    s_dqh,
    s_lb,
    s_lh,
    s_mb,
    L_Q,
    L_K,
    qk_scale,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,
):
    i_m, i_b, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos_q, T_q, bos_k, T_k = _seq_bounds(cu_seqlens_q, cu_seqlens_k, i_b, L_Q, L_K, IS_VARLEN)
    if i_m * BLOCK_M >= T_q:
        return
    i_b64 = i_b.to(tl.int64)
    q, s_qt = _head_base(q, i_b64, s_qb, bos_q, s_qt, i_h, s_qh, ALIGN)
    do, s_dt = _head_base(do, i_b64, s_db, bos_q, s_dt, i_h, s_dh, ALIGN)
    dq, s_dqt = _head_base(dq, i_b64, s_dqb, bos_q, s_dqt, i_h, s_dqh, ALIGN)
    k, s_kt = _head_base(k, i_b64, s_kb, bos_k, s_kt, i_h, s_kh, ALIGN)
    v, s_vt = _head_base(v, i_b64, s_vb, bos_k, s_vt, i_h, s_vh, ALIGN)
    lse += i_b64 * s_lb + i_h * s_lh + bos_q
    delta += i_b64 * s_lb + i_h * s_lh + bos_q
    key_mask += i_b64 * s_mb

    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < T_q
    o_n = tl.arange(0, BLOCK_N)
    # [BLOCK_M, BLOCK_D], [BLOCK_M, BLOCK_DT]
    p_q, p_qt = _ptrs2(q, o_m, s_qt, BLOCK_D, BLOCK_DT, False)
    p_do, p_dot = _ptrs2(do, o_m, s_dt, BLOCK_D, BLOCK_DT, False)
    b_q, b_qt = _load2(p_q, p_qt, m_m, HEAD_DIM, BLOCK_D, BLOCK_DT, True, False)
    b_do, b_dot = _load2(p_do, p_dot, m_m, HEAD_DIM, BLOCK_D, BLOCK_DT, True, False)
    # [BLOCK_M]: rows past the sequence end read LSE = +inf, so their P is exactly 0
    b_lse = tl.load(lse + o_m, mask=m_m, other=float("inf"))
    b_delta = tl.load(delta + o_m, mask=m_m, other=0.0)
    b_dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    b_dqt = tl.zeros([BLOCK_M, BLOCK_DT if BLOCK_DT > 0 else 1], dtype=tl.float32)
    # each block addresses its keys and values through `_block_at`

    if HAS_MASK:  # any key may be masked: every block takes the masked path
        for i_n in range(0, tl.cdiv(T_k, BLOCK_N)):
            m_n = _key_ok(i_n * BLOCK_N + o_n, T_k, key_mask, HAS_MASK)
            kb, rows = _block_at(k, i_n * BLOCK_N, s_kt, o_n, BLOCK_DT > 0)
            vb, _ = _block_at(v, i_n * BLOCK_N, s_vt, o_n, BLOCK_DT > 0)
            b_dq, b_dqt = _dq_block(
                b_q,
                b_qt,
                b_do,
                b_dot,
                b_lse,
                b_delta,
                kb,
                vb,
                rows,
                s_kt,
                s_vt,
                m_n,
                b_dq,
                b_dqt,
                qk_scale,
                HEAD_DIM,
                BLOCK_D,
                BLOCK_DT,
                True,
                DOT_FP32,
                PRECISION,
            )
    else:
        n_full = T_k // BLOCK_N
        for i_n in range(0, n_full):
            kb, rows = _block_at(k, i_n * BLOCK_N, s_kt, o_n, BLOCK_DT > 0)
            vb, _ = _block_at(v, i_n * BLOCK_N, s_vt, o_n, BLOCK_DT > 0)
            b_dq, b_dqt = _dq_block(
                b_q,
                b_qt,
                b_do,
                b_dot,
                b_lse,
                b_delta,
                kb,
                vb,
                rows,
                s_kt,
                s_vt,
                None,
                b_dq,
                b_dqt,
                qk_scale,
                HEAD_DIM,
                BLOCK_D,
                BLOCK_DT,
                False,
                DOT_FP32,
                PRECISION,
            )
        if n_full * BLOCK_N < T_k:  # the partial last block
            m_n = _key_ok(n_full * BLOCK_N + o_n, T_k, key_mask, False)
            kb, rows = _block_at(k, n_full * BLOCK_N, s_kt, o_n, BLOCK_DT > 0)
            vb, _ = _block_at(v, n_full * BLOCK_N, s_vt, o_n, BLOCK_DT > 0)
            b_dq, b_dqt = _dq_block(
                b_q,
                b_qt,
                b_do,
                b_dot,
                b_lse,
                b_delta,
                kb,
                vb,
                rows,
                s_kt,
                s_vt,
                m_n,
                b_dq,
                b_dqt,
                qk_scale,
                HEAD_DIM,
                BLOCK_D,
                BLOCK_DT,
                True,
                DOT_FP32,
                PRECISION,
            )

    _store2(dq, o_m, s_dqt, m_m, b_dq * sm_scale, b_dqt * sm_scale, HEAD_DIM, BLOCK_D, BLOCK_DT, DOT_FP32)


# ----------------------------------------------------------------------------------------------
# Launchers: block sizes, grids, allocation
# ----------------------------------------------------------------------------------------------


def next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def head_dim_split(head_dim: int, mode: str = "split") -> tuple[int, int]:
    """(BLOCK_D, BLOCK_DT): a power-of-two main tile plus a power-of-two tail tile (0 = none).

    "split" (default) pads only past 64: 72 -> 64+16 (90% of the MMA work is useful, vs 56% in a 128 tile),
    80 -> 64+16, 96 -> 64+32; the tail is >= 16 because fp16/bf16 tl.dot needs K >= 16. Head dims <= 64
    round up to 32 or 64 (40 -> 64): they are not SigLIP2 sizes, and fewer tile classes keep the set of
    compiled configs small. "pad" always uses one power-of-two tile (72 -> 128), for measuring the choice.
    """
    full = max(32, next_pow2(head_dim))
    if mode not in ("split", "pad"):
        raise ValueError(f"head_dim_mode must be 'split' or 'pad', got {mode!r}")
    if mode == "pad" or head_dim <= 64:
        return full, 0
    tail = max(16, next_pow2(head_dim - 64))
    return (full, 0) if 64 + tail >= full else (64, tail)


# Launch configs, one table per kernel family, keyed by GPU architecture family (kernels/_configs.py) and then
# by (dtype class, queries, tile width): dtype class "16bit" (bf16/fp16, tensor-core dots) or "fp32" (IEEE FMA
# dots); queries "pool" for max_seqlen_q <= 16 (the pooling head: one query per image), else "seq"; tile width
# BLOCK_D + BLOCK_DT from `head_dim_split` (32, 64, 80 = 64+16, 96 = 64+32, 128).
# Rule for every entry: it compiles for every architecture of its family with no register spills (ptxas STACK
# == LOCAL == 0) and within the family's shared memory per block, under triton 3.6, 3.8 and 3.9; among those,
# the largest tile (tests/test_aot.py checks; docs/design.md has the measured table). Throughput tuning on real
# GPUs is owed: no GPU has timed these.
# fwd: (BLOCK_M, BLOCK_N, num_warps, num_stages)
_FWD_BASE = {
    ("16bit", "seq", 32): (128, 64, 8, 3),
    ("16bit", "seq", 64): (128, 64, 8, 3),
    ("16bit", "seq", 80): (128, 64, 8, 3),
    ("16bit", "seq", 96): (128, 32, 8, 3),
    ("16bit", "seq", 128): (64, 64, 8, 3),
    ("16bit", "pool", 32): (16, 64, 8, 3),
    ("16bit", "pool", 64): (16, 64, 8, 3),
    ("16bit", "pool", 80): (16, 64, 8, 3),
    ("16bit", "pool", 96): (16, 64, 4, 3),  # 8 warps spill 8 B on sm_80 under triton 3.6
    ("16bit", "pool", 128): (16, 64, 8, 3),
    # fp32: small blocks, 8 warps to spread the registers (32 x 32 with 4 warps spills at d 64)
    ("fp32", "seq", 32): (32, 32, 4, 2),
    ("fp32", "seq", 64): (32, 32, 8, 2),
    ("fp32", "seq", 80): (32, 32, 8, 2),
    ("fp32", "seq", 96): (32, 32, 8, 2),
    ("fp32", "seq", 128): (32, 16, 8, 2),
}
# bwd: dK/dV kernel (BLOCK_M queries streamed, BLOCK_N keys held, num_warps), dQ kernel (BLOCK_M2 queries held,
# BLOCK_N2 keys streamed, num_warps2), num_stages
_BWD_BASE = {
    ("16bit", "seq", 32): (32, 128, 8, 128, 32, 8, 2),
    ("16bit", "seq", 64): (32, 128, 8, 128, 32, 8, 2),
    ("16bit", "seq", 80): (32, 64, 8, 64, 16, 8, 2),
    ("16bit", "seq", 96): (16, 64, 8, 64, 16, 8, 2),
    ("16bit", "seq", 128): (32, 64, 8, 32, 32, 4, 2),
    ("16bit", "pool", 32): (16, 64, 8, 16, 32, 8, 2),
    ("16bit", "pool", 64): (16, 64, 8, 16, 32, 8, 2),
    ("16bit", "pool", 80): (16, 64, 8, 16, 32, 8, 2),
    ("16bit", "pool", 96): (16, 64, 8, 16, 16, 4, 2),
    ("16bit", "pool", 128): (16, 64, 8, 16, 16, 4, 2),
    ("fp32", "seq", 32): (16, 16, 8, 32, 16, 4, 2),
    ("fp32", "seq", 64): (16, 16, 4, 32, 16, 4, 2),
    ("fp32", "seq", 80): (16, 16, 4, 32, 16, 8, 2),
    ("fp32", "seq", 96): (16, 16, 4, 16, 32, 4, 2),
    ("fp32", "seq", 128): (32, 16, 8, 32, 16, 4, 2),
}
# Per-family changes to the base tables (measured with the AOT harness under triton 3.6, 3.8 and 3.9, SigLIP2
# shapes, with the launcher's 16-byte stride hint, ALIGN; docs/design.md):
# - D 72 forward: 128x64 compiles spill-free on sm_80, 86, 89, 90 and 100; on sm_120 it spills 40-48 B
#   (padded+mask), so sm_120 takes 128x32. "default" must compile on all six: 128x64 spills on sm_120 and 128x32
#   spills 8 B on sm_100 under 3.8 (padded+mask), so it takes 64x32.
# - D 72 dK/dV: 32x64 spills 8-64 B (padded+mask) on sm_80 (triton 3.6), sm_86/89 and sm_120, so they take
#   16x64; that spills 24 B on sm_120 (padded+mask), which takes 16x32 (spilling on sm_90/100, 8 B). "default"
#   takes 16x16 with 4 warps, the largest 2-stage tile tried that is spill-free on all six under all three.
# - sm_100: the 128x64, 8-warp forward at D 64 spills 8 B (padded, no mask) at 128 registers; 128x32 does
#   not (nor does 64x64 with 4 warps; 128x64 with 4 warps spills 24 B).
# - D 96 (g-opt/16's vision tower, 1536 / 16 heads): the 128x32, 8-warp, 3-stage forward spills 8 B on sm_100
#   under 3.8 (padded+mask); 2 stages do not there, but spill on sm_120. sm_100 takes 2 stages, and "default"
#   64x32 with 4 warps, spill-free on all six under all three (as is every D 96 backward of the base table).
# "default" (unknown architectures) takes the sm_100 change and its own D 72 and D 96 tiles.
_FWD_SM120 = {("16bit", "seq", 80): (128, 32, 8, 3)}
_FWD_DEFAULT = {("16bit", "seq", 80): (64, 32, 8, 3), ("16bit", "seq", 96): (64, 32, 4, 3)}
_BWD_CONSUMER = {("16bit", "seq", 80): (16, 64, 8, 64, 16, 8, 2)}
_BWD_SM120 = {("16bit", "seq", 80): (16, 32, 8, 64, 16, 8, 2)}
_BWD_DEFAULT = {("16bit", "seq", 80): (16, 16, 4, 64, 16, 8, 2)}
_FWD_SM100 = {("16bit", "seq", 64): (128, 32, 8, 3), ("16bit", "seq", 96): (128, 32, 8, 2)}
# AMD, measured for gfx942 and gfx950 with the AOT harness under triton 3.9 (VGPR and SGPR spills both 0, LDS
# within 64 KB, every dot on MFMA), starting from "default":
# - the 3-stage forward spills SGPRs with the key mask (padded+mask) on both: 2 stages. D 64: 128x32 (128x64 and
#   64x64 spill 17-33 SGPRs); D 72: every 32- or 64-key block tried spills 7-111 SGPRs with the mask (the
#   unaligned strides' scalar address math), 128x16 does not; D 96: 64x32 with 4 warps.
# - D 64 dK/dV: 32x128 with 8 warps spills 8 SGPRs on gfx942 (varlen), 32x64 6; 16x128 is clean at 128-139 VGPRs
#   (32x128 with 4 warps is too, at 317 VGPRs: no headroom for the fp16 and pooling variants).
# These tiles are "amd" (an unknown AMD architecture: Triton's default options) and, with HIP options, CDNA.
_FWD_AMD = {
    **_FWD_BASE,
    **_FWD_SM100,
    **_FWD_DEFAULT,
    ("16bit", "seq", 64): (128, 32, 8, 2),
    ("16bit", "seq", 80): (128, 16, 8, 2),
    ("16bit", "seq", 96): (64, 32, 4, 2),
}
_BWD_AMD = {**_BWD_BASE, **_BWD_DEFAULT, ("16bit", "seq", 64): (16, 128, 8, 128, 32, 8, 2)}
# CDNA (gfx90a, gfx942, gfx950): the same tiles with matrix_instr_nonkdim=16 and waves_per_eu=2 for all three
# kernels (kernels/_configs.py HIP_OPTION_NAMES), measured over every SigLIP2 shape (bf16, fp16; D 64, 72, 96;
# varlen, padded, padded+mask; sequence and pooling queries) under triton 3.9:
# - Triton's own choice (nonkdim 0) mixes 16x16 and 32x32 MFMAs; 32 everywhere costs the most registers (dK/dV D 72
#   on gfx942: 273 VGPRs, vs 138 with 16; forward D 96: 167-172 vs 126-142); 16 everywhere is the fewest: max
#   VGPRs forward 142 (gfx942) / 122 (gfx950), dK/dV 156 / 140, dQ 150 / 116, 0 spills.
# - waves_per_eu=2 (a 256-VGPR cap per wave, 2 waves per SIMD as the scheduling target) keeps every variant
#   spill-free (max 191 VGPRs: the gfx942 pooling forward, which uses the headroom) while 4 (128 VGPRs) spills
#   1-29 VGPRs in most D 64 and D 96 backward kernels and the D 96 forward on gfx942.
_HIP_CDNA = {"matrix_instr_nonkdim": 16, "waves_per_eu": 2}
# CDNA backward at D 72 and 96: one 16-row slice of the held tile per wave. With 16x16 MFMAs a wave owns 16 rows of
# a tile (the held keys in dK/dV, the held queries in dQ); fewer rows than 16 per wave make waves compute the same
# scores (bench/amd_peer_report.py: the v_mfma per key block against the true-D FLOPs, and v_exp per wave). The
# default tiles did that: dK/dV D 72 16x16 with 4 waves (32% of the MFMA work useful), dQ D 72 64x16 with 8 (52%),
# dK/dV D 96 16x64 with 8 (67%), dQ D 96 64x16 with 8 (60%). 4 waves on 64 rows instead (triton 3.9, gfx942, bf16
# varlen; max over every SigLIP2 variant on gfx942 and gfx950, 0 spills): dK/dV D 72 16x64 90% useful (the rest is
# the 16-wide tail of the 64 + 16 split), loop instructions per 1k scores 3008 -> 952, 193 VGPRs; dQ D 72 64x16 90%,
# 1352 -> 568, 154; dK/dV D 96 16x64 100%, 1976 -> 828, 200; dQ D 96 64x16 100%, 1184 -> 548, 162. (32x64 dK/dV
# spills at D 96 and reaches 254 VGPRs at D 72; 16x32 with 2 waves is equal at D 72.)
_BWD_CDNA = {
    **_BWD_AMD,
    ("16bit", "seq", 80): (16, 64, 4, 64, 16, 4, 2),
    ("16bit", "seq", 96): (16, 64, 4, 64, 16, 4, 2),
}


def _with_hip(table: dict, hip: dict) -> dict:
    """`table` with the HIP options `hip` appended to every entry (kernels/_configs.py `split_entry`)."""
    return {k: (*v, hip) for k, v in table.items()}


# RDNA (gfx1100, gfx1201: wave 32, WMMA, 256 VGPRs per wave, no AGPRs; no HIP options: WMMA has one 16x16 shape,
# and the CDNA register budget of waves_per_eu does not apply), measured for the forward under triton 3.9:
# - pooling head (16 queries): 16x64 spills 10-80 VGPRs on gfx1100 (D 64-96, 3 or 2 stages, 4 or 8 warps);
#   16x32 with 8 warps and 2 stages is clean on both (gfx1100: 164, 223, 226 VGPRs at D 64, 72, 96).
# - D 96: 64x32 with 4 warps spills 36-91 VGPRs on gfx1100 (8 warps: 31 with the mask; 32x32: 18-63; 64x16 with 4
#   warps 3-26); 64x32 with 8 warps and 1 stage is clean (217-220 VGPRs on gfx1100, 133-139 on gfx1201), as is
#   64x16 with 8 warps and 2 stages (241): the larger tile it is.
_FWD_RDNA = {
    **_FWD_AMD,
    **{("16bit", "pool", t): (16, 32, 8, 2) for t in (32, 64, 80, 96, 128)},
    ("16bit", "seq", 96): (64, 32, 8, 1),
}
_CDNA = ("gfx90a", "gfx942", "gfx950")
FWD_CONFIGS = {
    "sm80": _FWD_BASE,
    "sm86": _FWD_BASE,
    "sm90": _FWD_BASE,
    "sm100": {**_FWD_BASE, **_FWD_SM100},
    "sm120": {**_FWD_BASE, **_FWD_SM120},
    "default": {**_FWD_BASE, **_FWD_SM100, **_FWD_DEFAULT},
    **{f: _with_hip(_FWD_AMD, _HIP_CDNA) for f in _CDNA},
    "rdna": _FWD_RDNA,
    "amd": _FWD_AMD,
}
BWD_CONFIGS = {
    "sm80": {**_BWD_BASE, **_BWD_CONSUMER},
    "sm86": {**_BWD_BASE, **_BWD_CONSUMER},
    "sm90": _BWD_BASE,
    "sm100": _BWD_BASE,
    "sm120": {**_BWD_BASE, **_BWD_SM120},
    "default": {**_BWD_BASE, **_BWD_DEFAULT},
    **{f: _with_hip(_BWD_CDNA, _HIP_CDNA) for f in _CDNA},
    "rdna": _BWD_AMD,
    "amd": _BWD_AMD,
}
# delta = rowsum(dO * O): (BLOCK_M, num_warps). 4 warps spill 28 B at D 72 in fp16 on sm_120 (80 registers).
PREPROCESS_CONFIG = (32, 8)
check_tables("attention fwd", FWD_CONFIGS)
check_tables("attention bwd", BWD_CONFIGS)


def _key(d_tile: int, elem_bytes: int, max_seqlen_q: int) -> tuple:
    # fp32 has one class: its tiles are already the small ones
    dclass = "fp32" if elem_bytes == 4 else "16bit"
    return dclass, "pool" if max_seqlen_q <= 16 and dclass == "16bit" else "seq", d_tile


def fwd_config(d_tile: int, elem_bytes: int, max_seqlen_q: int, family: str = INTERPRETER_FAMILY) -> dict:
    """BLOCK_M, BLOCK_N, num_warps, num_stages and the entry's HIP options ("hip": {} but on AMD)."""
    (bm, bn, w, s), hip = split_entry(FWD_CONFIGS[family][_key(d_tile, elem_bytes, max_seqlen_q)], 4)
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s, hip=hip)


def bwd_config(d_tile: int, elem_bytes: int, max_seqlen_q: int, family: str = INTERPRETER_FAMILY) -> dict:
    """dK/dV kernel: BLOCK_N keys held, BLOCK_M queries streamed (num_warps);
    dQ kernel: BLOCK_M2 queries held, BLOCK_N2 keys streamed (num_warps2); "hip": the HIP options of both ({} but
    on AMD)."""
    (bm, bn, w, bm2, bn2, w2, s), hip = split_entry(BWD_CONFIGS[family][_key(d_tile, elem_bytes, max_seqlen_q)], 7)
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, BLOCK_M2=bm2, BLOCK_N2=bn2, num_warps2=w2, num_stages=s, hip=hip)


# The @triton.jit kernels the launchers start, by role (kernels/aot_cases.py compiles each of them).
KERNELS = {
    "fwd": _attn_fwd_kernel,
    "dkdv": _attn_bwd_dkdv_kernel,
    "dq": _attn_bwd_dq_kernel,
    "preprocess": _attn_bwd_preprocess_kernel,
}


def _unit_last(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _new_like(t):
    """`new_empty` in t's memory layout: torch.empty_like's strides, which the fake impls report too. The model's
    (B, H, L, D) views of (B, L, H, D) activations then get outputs that transpose back without a copy."""
    strides = torch.empty_like(t, device="meta").stride()
    return new_empty((t.numel(),), t.dtype, t.device).as_strided(t.shape, strides)


def _stride_align(*tensors) -> int:
    """The ALIGN constexpr (`_head_base`): 16 bytes in elements when every stride of every tensor but the unit
    last one is a multiple of it (any (total, H, D) or (B, H, L, D) layout at D 72 in 16-bit), else 1."""
    n = 16 // tensors[0].element_size()
    return n if all(s % n == 0 for t in tensors for s in t.stride()[:-1]) else 1


def _strides(name: str, t, is_varlen: bool) -> dict:
    """Kernel arguments s_<name>b, s_<name>t, s_<name>h: (batch, token, head) strides of a (total, H, D) or
    (B, H, L, D) tensor (its last dim is unit-stride)."""
    b, tok, h = (0, t.stride(0), t.stride(1)) if is_varlen else (t.stride(0), t.stride(2), t.stride(1))
    return {f"s_{name}b": b, f"s_{name}t": tok, f"s_{name}h": h}


@dataclasses.dataclass(frozen=True)
class _Launch:
    """What every attention kernel launch of one call shares: the layout, sizes, sequence bounds and key mask."""

    is_varlen: bool
    B: int
    H: int
    D: int
    lse_shape: tuple
    args: dict  # kernel arguments common to the forward, dK/dV and dQ kernels

    @staticmethod
    def of(q, k, cu_seqlens_q, cu_seqlens_k, key_mask) -> _Launch:
        is_varlen = cu_seqlens_q is not None
        if is_varlen:
            B, (total_q, H, D) = cu_seqlens_q.numel() - 1, q.shape
            lse_shape, s_lb, s_lh, L_q, L_k = (H, total_q), 0, total_q, 0, 0
        else:
            B, H, L, D = q.shape
            lse_shape, s_lb, s_lh, L_q, L_k = (B, H, L), H * L, L, L, k.shape[2]
        if B > 65535 or H > 65535:
            raise ValueError(f"attention: batch ({B}) and heads ({H}) must each be <= 65535 (CUDA grid limit)")
        dummy = torch.empty(0, dtype=torch.int32, device=q.device)
        key_mask = _unit_last(key_mask) if key_mask is not None else None
        args = dict(
            cu_seqlens_q=cu_seqlens_q.contiguous() if is_varlen else dummy,  # indexed with unit stride
            cu_seqlens_k=cu_seqlens_k.contiguous() if is_varlen else dummy,
            key_mask=key_mask.view(torch.uint8) if key_mask is not None else dummy.view(torch.uint8),
            s_mb=key_mask.stride(0) if key_mask is not None else 0,
            s_lb=s_lb,
            s_lh=s_lh,
            L_Q=L_q,
            L_K=L_k,
            HEAD_DIM=D,
            IS_VARLEN=is_varlen,
            HAS_MASK=key_mask is not None,
            DOT_FP32=dot_fp32(),
            PRECISION=dot_precision(q.dtype),
        )
        return _Launch(is_varlen, B, H, D, lse_shape, args)


def attention_fwd(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    key_mask,
    max_seqlen_q,
    max_seqlen_k,
    scale,
    *,
    head_dim_mode="split",
    config=None,
):
    """Returns (o like q, lse fp32 base-2: (H, total_q) varlen / (B, H, Lq) padded)."""
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    la = _Launch.of(q, k, cu_seqlens_q, cu_seqlens_k, key_mask)
    o, lse = _new_like(q), new_empty(la.lse_shape, torch.float32, q.device)
    bd, bdt = head_dim_split(la.D, head_dim_mode)
    fam = device_family(q.device)
    cfg = config or fwd_config(bd + bdt, q.element_size(), max_seqlen_q, fam)
    grid = (triton.cdiv(max_seqlen_q, cfg["BLOCK_M"]), la.B, la.H)
    if q.numel() == 0 or grid[0] == 0:
        return o.zero_(), lse.fill_(float("inf"))
    _attn_fwd_kernel[grid](
        q=q,
        k=k,
        v=v,
        o=o,
        lse=lse,
        **la.args,
        **_strides("q", q, la.is_varlen),
        **_strides("k", k, la.is_varlen),
        **_strides("v", v, la.is_varlen),
        **_strides("o", o, la.is_varlen),
        qk_scale=scale * LOG2E,
        NEG_SCALE=scale < 0,
        ALIGN=_stride_align(q, k, v, o),
        BLOCK_D=bd,
        BLOCK_DT=bdt,
        BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"],
        **launch_kwargs(fam, cfg["num_warps"], cfg["num_stages"], cfg.get("hip")),
    )
    return o, lse


def attention_bwd(
    do,
    q,
    k,
    v,
    o,
    lse,
    cu_seqlens_q,
    cu_seqlens_k,
    key_mask,
    max_seqlen_q,
    max_seqlen_k,
    scale,
    *,
    head_dim_mode="split",
    config=None,
):
    """Returns (dq, dk, dv) like (q, k, v)."""
    do, q, k, v, o = (_unit_last(t) for t in (do, q, k, v, o))
    la = _Launch.of(q, k, cu_seqlens_q, cu_seqlens_k, key_mask)
    dq, dk, dv = _new_like(q), _new_like(k), _new_like(v)
    delta = new_empty(lse.shape, torch.float32, lse.device)
    bd, bdt = head_dim_split(la.D, head_dim_mode)
    fam = device_family(q.device)
    cfg = config or bwd_config(bd + bdt, q.element_size(), max_seqlen_q, fam)
    strides = {
        **_strides("q", q, la.is_varlen),
        **_strides("k", k, la.is_varlen),
        **_strides("v", v, la.is_varlen),
        **_strides("d", do, la.is_varlen),
    }
    align = _stride_align(q, k, v, do, o, dq, dk, dv)
    common = dict(
        q=q,
        k=k,
        v=v,
        do=do,
        lse=lse,
        delta=delta,
        **la.args,
        **strides,
        qk_scale=scale * LOG2E,
        sm_scale=scale,
        ALIGN=align,
        BLOCK_D=bd,
        BLOCK_DT=bdt,
    )
    if q.numel() and max_seqlen_q > 0:
        pm, pw = PREPROCESS_CONFIG
        _attn_bwd_preprocess_kernel[(triton.cdiv(max_seqlen_q, pm), la.B, la.H)](
            o=o,
            do=do,
            delta=delta,
            cu_seqlens_q=la.args["cu_seqlens_q"],
            **_strides("o", o, la.is_varlen),
            **_strides("d", do, la.is_varlen),
            s_lb=la.args["s_lb"],
            s_lh=la.args["s_lh"],
            L_Q=la.args["L_Q"],
            HEAD_DIM=la.D,
            BLOCK_DP=next_pow2(bd + bdt),
            BLOCK_M=pm,
            IS_VARLEN=la.is_varlen,
            ALIGN=align,
            num_warps=pw,
            num_stages=1,
        )
        _attn_bwd_dq_kernel[(triton.cdiv(max_seqlen_q, cfg["BLOCK_M2"]), la.B, la.H)](
            dq=dq,
            **_strides("dq", dq, la.is_varlen),
            **common,
            BLOCK_M=cfg["BLOCK_M2"],
            BLOCK_N=cfg["BLOCK_N2"],
            **launch_kwargs(fam, cfg["num_warps2"], cfg["num_stages"], cfg.get("hip")),
        )
    else:
        dq.zero_()
    if k.numel() and max_seqlen_k > 0:
        _attn_bwd_dkdv_kernel[(triton.cdiv(max_seqlen_k, cfg["BLOCK_N"]), la.B, la.H)](
            dk=dk,
            dv=dv,
            **_strides("dk", dk, la.is_varlen),
            **_strides("dv", dv, la.is_varlen),
            **common,
            BLOCK_M=cfg["BLOCK_M"],
            BLOCK_N=cfg["BLOCK_N"],
            **launch_kwargs(fam, cfg["num_warps"], cfg["num_stages"], cfg.get("hip")),
        )
    else:
        dk.zero_()
        dv.zero_()
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# torch.library ops + autograd (custom_op keeps torch.compile(fullgraph=True) tracing through the kernels)
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("siglip2::attention_fwd", mutates_args=())
def attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable (o, lse): varlen with cu_seqlens (key_mask None), padded with cu_seqlens None."""
    return attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, key_mask, max_seqlen_q, max_seqlen_k, scale)


@attention_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, key_mask, max_seqlen_q, max_seqlen_k, scale):
    shape = (q.shape[1], q.shape[0]) if cu_seqlens_q is not None else q.shape[:3]
    return torch.empty_like(_unit_last(q)), q.new_empty(shape, dtype=torch.float32)  # as attention_fwd allocates


@torch.library.custom_op("siglip2::attention_bwd", mutates_args=())
def _attention_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_bwd(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, key_mask, max_seqlen_q, max_seqlen_k, scale)


@_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, key_mask, max_seqlen_q, max_seqlen_k, scale):
    return torch.empty_like(_unit_last(q)), torch.empty_like(_unit_last(k)), torch.empty_like(_unit_last(v))


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens_q, cu_seqlens_k, key_mask, max_seqlen_q, max_seqlen_k, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, key_mask)
    ctx.args = (max_seqlen_q, max_seqlen_k, scale)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, key_mask = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, key_mask, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)
