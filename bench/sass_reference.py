"""Minimal FlashAttention-2 kernels: the baseline that bench/sass_report.py measures the real kernels against.

One per kernel kind of kernels/attention_triton.py (forward, dK/dV, dQ), with the math of Triton's fused-attention
tutorial (python/tutorials/06-fused-attention.py, non-causal stage) and nothing else: no masks (every block is
full: the sequence length is a multiple of both tiles), no varlen offsets (one sequence, plain pointers advanced
by a block per iteration), no head-dim padding (the row holds exactly BLOCK_D + BLOCK_DT columns). A kernel that
does less per key block than these cannot be a correct FlashAttention-2, so their inner loops are the floor the
project's kernels are held to (issue 17). They are compiled, never launched: bench/sass_report.py disassembles them.

The one deviation from the tutorial: the backward computes P as exp2(s * qk_scale - lse) (one FFMA, as the
project's kernels do) where the tutorial pre-scales K by sm_scale * log2(e) in a separate pass over memory and
then subtracts (one FADD): the same instruction count in the loop. With BLOCK_DT > 0 the head dim is split into a
BLOCK_D main tile plus a BLOCK_DT tail (64 + 16 for SigLIP2's 72, run here as an unpadded 80) with the extra
dots and loads the split needs and no others.

Do not change these kernels to make a ratio look better; if one must change, say why here.
Changes: on 2026-12-03 bench/sass_report.py started compiling them with the row stride `s_t` marked 16-byte
aligned at every head dim (it was marked only at D 64), because the project's kernels now learn the same from
the launcher (ALIGN): at D 72 that turns the references' 2-byte loads into 16-byte vector loads, lowering their
loop counts (making every D 72 ratio harder, not easier). The kernels themselves are unchanged.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def ref_fwd_kernel(
    q,
    k,
    v,
    o,
    lse,
    s_t,
    T,
    qk_scale,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_m, i_h = tl.program_id(0), tl.program_id(1)
    HD: tl.constexpr = BLOCK_D + BLOCK_DT
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = tl.arange(0, BLOCK_N)
    o_d = i_h * HD + tl.arange(0, BLOCK_D)
    b_q = tl.load(q + o_m[:, None] * s_t + o_d[None, :])
    kT_ptrs = k + o_n[None, :] * s_t + o_d[:, None]
    v_ptrs = v + o_n[:, None] * s_t + o_d[None, :]
    if BLOCK_DT > 0:
        o_dt = i_h * HD + BLOCK_D + tl.arange(0, BLOCK_DT)
        b_qt = tl.load(q + o_m[:, None] * s_t + o_dt[None, :])
        kTt_ptrs = k + o_n[None, :] * s_t + o_dt[:, None]
        vt_ptrs = v + o_n[:, None] * s_t + o_dt[None, :]
        acct = tl.zeros([BLOCK_M, BLOCK_DT], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for _ in range(0, T, BLOCK_N):
        qk = tl.dot(b_q, tl.load(kT_ptrs))
        if BLOCK_DT > 0:
            qk = tl.dot(b_qt, tl.load(kTt_ptrs), qk)
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        p = p.to(v.dtype.element_ty)
        acc = tl.dot(p, tl.load(v_ptrs), acc * alpha[:, None])
        m_i = m_ij
        kT_ptrs += BLOCK_N * s_t
        v_ptrs += BLOCK_N * s_t
        if BLOCK_DT > 0:
            acct = tl.dot(p, tl.load(vt_ptrs), acct * alpha[:, None])
            kTt_ptrs += BLOCK_N * s_t
            vt_ptrs += BLOCK_N * s_t
    tl.store(lse + i_h * T + o_m, m_i + tl.math.log2(l_i))
    tl.store(o + o_m[:, None] * s_t + o_d[None, :], (acc / l_i[:, None]).to(o.dtype.element_ty))
    if BLOCK_DT > 0:
        tl.store(o + o_m[:, None] * s_t + o_dt[None, :], (acct / l_i[:, None]).to(o.dtype.element_ty))


@triton.jit
def ref_dkdv_kernel(
    q,
    k,
    v,
    do,
    lse,
    delta,
    dk,
    dv,
    s_t,
    T,
    qk_scale,
    sm_scale,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """BLOCK_N keys held, BLOCK_M queries streamed (the tutorial's _attn_bwd_dkdv)."""
    i_n, i_h = tl.program_id(0), tl.program_id(1)
    HD: tl.constexpr = BLOCK_D + BLOCK_DT
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_m = tl.arange(0, BLOCK_M)
    o_d = i_h * HD + tl.arange(0, BLOCK_D)
    b_k = tl.load(k + o_n[:, None] * s_t + o_d[None, :])
    b_v = tl.load(v + o_n[:, None] * s_t + o_d[None, :])
    dk_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    qT_ptrs = q + o_m[None, :] * s_t + o_d[:, None]
    do_ptrs = do + o_m[:, None] * s_t + o_d[None, :]
    if BLOCK_DT > 0:
        o_dt = i_h * HD + BLOCK_D + tl.arange(0, BLOCK_DT)
        b_kt = tl.load(k + o_n[:, None] * s_t + o_dt[None, :])
        b_vt = tl.load(v + o_n[:, None] * s_t + o_dt[None, :])
        dkt_acc = tl.zeros([BLOCK_N, BLOCK_DT], dtype=tl.float32)
        dvt_acc = tl.zeros([BLOCK_N, BLOCK_DT], dtype=tl.float32)
        qTt_ptrs = q + o_m[None, :] * s_t + o_dt[:, None]
        dot_ptrs = do + o_m[:, None] * s_t + o_dt[None, :]
    lse_ptrs = lse + i_h * T + o_m
    delta_ptrs = delta + i_h * T + o_m
    for _ in range(0, T, BLOCK_M):
        qT = tl.load(qT_ptrs)
        b_do = tl.load(do_ptrs)
        qkT = tl.dot(b_k, qT)
        dpT = tl.dot(b_v, tl.trans(b_do))
        if BLOCK_DT > 0:
            qTt = tl.load(qTt_ptrs)
            b_dot = tl.load(dot_ptrs)
            qkT = tl.dot(b_kt, qTt, qkT)
            dpT = tl.dot(b_vt, tl.trans(b_dot), dpT)
        pT = tl.math.exp2(qkT * qk_scale - tl.load(lse_ptrs)[None, :])
        dsT = (pT * (dpT - tl.load(delta_ptrs)[None, :])).to(q.dtype.element_ty)
        pT = pT.to(do.dtype.element_ty)
        dv_acc = tl.dot(pT, b_do, dv_acc)
        dk_acc = tl.dot(dsT, tl.trans(qT), dk_acc)
        if BLOCK_DT > 0:
            dvt_acc = tl.dot(pT, b_dot, dvt_acc)
            dkt_acc = tl.dot(dsT, tl.trans(qTt), dkt_acc)
            qTt_ptrs += BLOCK_M * s_t
            dot_ptrs += BLOCK_M * s_t
        qT_ptrs += BLOCK_M * s_t
        do_ptrs += BLOCK_M * s_t
        lse_ptrs += BLOCK_M
        delta_ptrs += BLOCK_M
    tl.store(dk + o_n[:, None] * s_t + o_d[None, :], (dk_acc * sm_scale).to(dk.dtype.element_ty))
    tl.store(dv + o_n[:, None] * s_t + o_d[None, :], dv_acc.to(dv.dtype.element_ty))
    if BLOCK_DT > 0:
        tl.store(dk + o_n[:, None] * s_t + o_dt[None, :], (dkt_acc * sm_scale).to(dk.dtype.element_ty))
        tl.store(dv + o_n[:, None] * s_t + o_dt[None, :], dvt_acc.to(dv.dtype.element_ty))


@triton.jit
def ref_dq_kernel(
    q,
    k,
    v,
    do,
    lse,
    delta,
    dq,
    s_t,
    T,
    qk_scale,
    sm_scale,
    BLOCK_D: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """BLOCK_M queries held, BLOCK_N keys streamed (the tutorial's _attn_bwd_dq)."""
    i_m, i_h = tl.program_id(0), tl.program_id(1)
    HD: tl.constexpr = BLOCK_D + BLOCK_DT
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = tl.arange(0, BLOCK_N)
    o_d = i_h * HD + tl.arange(0, BLOCK_D)
    b_q = tl.load(q + o_m[:, None] * s_t + o_d[None, :])
    b_do = tl.load(do + o_m[:, None] * s_t + o_d[None, :])
    b_lse = tl.load(lse + i_h * T + o_m)
    b_delta = tl.load(delta + i_h * T + o_m)
    dq_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    kT_ptrs = k + o_n[None, :] * s_t + o_d[:, None]
    vT_ptrs = v + o_n[None, :] * s_t + o_d[:, None]
    if BLOCK_DT > 0:
        o_dt = i_h * HD + BLOCK_D + tl.arange(0, BLOCK_DT)
        b_qt = tl.load(q + o_m[:, None] * s_t + o_dt[None, :])
        b_dot = tl.load(do + o_m[:, None] * s_t + o_dt[None, :])
        dqt_acc = tl.zeros([BLOCK_M, BLOCK_DT], dtype=tl.float32)
        kTt_ptrs = k + o_n[None, :] * s_t + o_dt[:, None]
        vTt_ptrs = v + o_n[None, :] * s_t + o_dt[:, None]
    for _ in range(0, T, BLOCK_N):
        kT = tl.load(kT_ptrs)
        qk = tl.dot(b_q, kT)
        dp = tl.dot(b_do, tl.load(vT_ptrs))
        if BLOCK_DT > 0:
            kTt = tl.load(kTt_ptrs)
            qk = tl.dot(b_qt, kTt, qk)
            dp = tl.dot(b_dot, tl.load(vTt_ptrs), dp)
        p = tl.math.exp2(qk * qk_scale - b_lse[:, None])
        ds = (p * (dp - b_delta[:, None])).to(k.dtype.element_ty)
        dq_acc = tl.dot(ds, tl.trans(kT), dq_acc)
        if BLOCK_DT > 0:
            dqt_acc = tl.dot(ds, tl.trans(kTt), dqt_acc)
            kTt_ptrs += BLOCK_N * s_t
            vTt_ptrs += BLOCK_N * s_t
        kT_ptrs += BLOCK_N * s_t
        vT_ptrs += BLOCK_N * s_t
    tl.store(dq + o_m[:, None] * s_t + o_d[None, :], (dq_acc * sm_scale).to(dq.dtype.element_ty))
    if BLOCK_DT > 0:
        tl.store(dq + o_m[:, None] * s_t + o_dt[None, :], (dqt_acc * sm_scale).to(dq.dtype.element_ty))


KERNELS = {"fwd": ref_fwd_kernel, "dkdv": ref_dkdv_kernel, "dq": ref_dq_kernel}
