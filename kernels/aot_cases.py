"""The ahead-of-time compile cases: every launch-config table entry of every op, per target architecture.

A case (see kernels/aot_compile.py `aot_run`) is one kernel specialization as a real launch would build it, for one
`sm_<cc>`: the config comes from the table of that cc's family (kernels/_configs.py), and the "default" table
is compiled for every cc too (it is what an unknown architecture gets). Each case carries `required`: True for
the shapes SigLIP2 runs (attention head dims 64, 72 and 96 (g-opt/16's vision tower) in fp16 and bf16: varlen,
varlen with one query per image (pooling head), padded with and without a key mask, forward and backward; the
patch-embedding and loss configs of B/16, L/16, So400m/14 and So400m/16). A required case must not spill; every
case must compile and fit shared memory. `siglip2_only=True` builds the required cases alone;
`all_cases(tier="ci")` a subset of them sized to CI's time budget.
"""

from __future__ import annotations

import torch

from ._configs import AOT_CCS, family, is_amd, launch_kwargs, split_entry

_TY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _dedupe(cases):
    seen, out = set(), []
    for c in cases:
        key = (c["name"], c["cc"])
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _families(cc):
    """The arch's own family and the fallback an unknown arch of its vendor gets ("default", or "amd")."""
    fallback = "amd" if is_amd(cc) else "default"
    return (family(cc), fallback) if family(cc) != fallback else (fallback,)


_HIP_TAGS = {"waves_per_eu": "wpe", "matrix_instr_nonkdim": "nk", "kpack": "kp"}


def _launch(fam, num_warps, num_stages, hip):
    """A case's num_warps, num_stages and amd_options (the HIP options), from the launcher's own `launch_kwargs`
    (kernels/_configs.py): a case compiles with exactly the options a launch on family `fam` passes."""
    kw = launch_kwargs(fam, num_warps, num_stages, hip)
    return dict(num_warps=kw.pop("num_warps"), num_stages=kw.pop("num_stages"), amd_options=kw)


def _hip_tag(launch) -> str:
    """The case-name suffix of its HIP options ("-nk16-wpe2"): cases that differ only in them keep apart."""
    return "".join(f"-{_HIP_TAGS[k]}{v}" for k, v in sorted(launch["amd_options"].items()))


# ---------------------------------------------------------------------------------------------- attention


def _attn_signature(fn, constexprs, dtype):
    from .aot_compile import jit_function

    ptr = "*" + _TY[dtype]
    return {
        n: (
            "*fp32"
            if n in ("lse", "delta")
            else "*i32"
            if n.startswith("cu_seqlens")
            else "*u8"
            if n == "key_mask"
            else "fp32"
            if n in ("qk_scale", "sm_scale")
            else "i32"
            if n[:2] in ("s_", "L_")
            else ptr
        )
        for n in jit_function(fn).arg_names
        if n not in constexprs
    }


def _attn_variants(dclass, queries, tile, siglip2_only):
    """(dtype, head dim, layout, alignment, required) to compile for one table key."""
    out = []
    # tile -> SigLIP2 head dim: B/16, L/16 768/12, 1024/16 = 64; So400m 1152/16 = 72; g-opt/16 vision 1536/16 = 96
    siglip2_d = {64: 64, 80: 72, 96: 96}.get(tile) if dclass == "16bit" else None
    layouts = ("varlen",) if queries == "pool" else ("varlen", "padded+mask", "padded")
    if siglip2_d is not None:
        # D 64 and 96: every pointer and stride divisible by 16; D 72: strides are not (s_qh = 72), pointers are
        how = "pointers" if siglip2_d == 72 else "aligned"
        out += [(dt, siglip2_d, lay, how, True) for dt in (torch.bfloat16, torch.float16) for lay in layouts]
    if not siglip2_only:
        dt = torch.float32 if dclass == "fp32" else torch.bfloat16
        out += [
            (dt, tile, "varlen", "aligned", False),
            (dt, tile - 1, "varlen", "unaligned", False),
            (dt, tile, "padded+mask", "aligned", False),
        ]
    return out


_SPLIT = {32: (32, 0), 64: (64, 0), 80: (64, 16), 96: (64, 32), 128: (128, 0)}  # tile -> (BLOCK_D, BLOCK_DT)


def _align(how, dtype):
    """The launcher's ALIGN (`_stride_align`): strides are multiples of 16 bytes but in the "unaligned" cases
    (head dim = tile - 1); at D 72 ("pointers") they are multiples of 8 elements, not of 16."""
    return 1 if how == "unaligned" else 16 // torch.empty(0, dtype=dtype).element_size()


def _attn_kernel_case(cc, fam, key, kname, dtype, D, layout, how, required):
    """One attention kernel ("fwd", "dkdv" or "dq") as the launcher builds it from table `fam`'s entry `key`."""
    from . import attention_triton as T
    from ._utils import dot_precision

    _, queries, tile = key
    bd, bdt = _SPLIT[tile]
    (bm, bn, w, s), hip = split_entry(T.FWD_CONFIGS[fam][key], 4)
    (bm_, bn_, w_, bm2, bn2, w2, s_), hip_ = split_entry(T.BWD_CONFIGS[fam][key], 7)
    fn, m, n, launch = {
        "fwd": (T.KERNELS["fwd"], bm, bn, _launch(fam, w, s, hip)),
        "dkdv": (T.KERNELS["dkdv"], bm_, bn_, _launch(fam, w_, s_, hip_)),
        "dq": (T.KERNELS["dq"], bm2, bn2, _launch(fam, w2, s_, hip_)),
    }[kname]
    nw, ns = launch["num_warps"], launch["num_stages"]
    cx = dict(
        HEAD_DIM=D,
        BLOCK_D=bd,
        BLOCK_DT=bdt,
        IS_VARLEN=layout == "varlen",
        HAS_MASK=layout == "padded+mask",
        DOT_FP32=False,
        PRECISION=dot_precision(dtype),
        BLOCK_M=m,
        BLOCK_N=n,
        ALIGN=_align(how, dtype),
    )
    if kname == "fwd":
        cx["NEG_SCALE"] = False  # a negative softmax scale (never SigLIP2's) compiles its own forward
    sig = _attn_signature(fn, cx, dtype)
    aligned = {
        "aligned": [a for a, t in sig.items() if t.startswith("*") or t == "i32"],
        "pointers": True,
        "unaligned": False,
    }[how]
    name = f"{kname}-{_TY[dtype]}-D{D}-{queries}-{layout}-{how}-{m}x{n}{'+' + str(bdt) if bdt else ''}-w{nw}s{ns}"
    name += _hip_tag(launch)
    return dict(
        name=name,
        cc=cc,
        family=fam,
        op="attention",
        kernel=kname,
        dtype=_TY[dtype],
        head_dim=D,
        layout=layout,
        queries=queries,
        tile=f"{m}x{n}",
        block_d=bd,
        block_dt=bdt,
        block_m=m,
        block_n=n,
        **launch,
        required=required,
        fn=fn,
        signature=sig,
        constexprs=cx,
        aligned=aligned,
    )


def attention_kernel_case(kname, cc, head_dim, dtype=torch.bfloat16, layout="varlen", queries="seq"):
    """The case a launch on `sm_<cc>` compiles for kernel `kname` at a SigLIP2 head dim (64 or 72), with the
    alignment a real launch gets (bench/sass_report.py)."""
    from . import attention_triton as T

    bd, bdt = T.head_dim_split(head_dim)
    key = ("fp32" if dtype == torch.float32 else "16bit", queries, bd + bdt)
    how = "aligned" if head_dim % 16 == 0 else "pointers"
    return _attn_kernel_case(cc, family(cc), key, kname, dtype, head_dim, layout, how, True)


def attention_cases(ccs=AOT_CCS, siglip2_only=False):
    from . import attention_triton as T

    cases = []
    for cc in ccs:
        for fam in _families(cc):
            for key in T.FWD_CONFIGS[fam]:
                dclass, queries, tile = key
                bd, bdt = _SPLIT[tile]
                for dtype, D, layout, how, required in _attn_variants(dclass, queries, tile, siglip2_only):
                    for kname in ("fwd", "dkdv", "dq"):
                        cases.append(_attn_kernel_case(cc, fam, key, kname, dtype, D, layout, how, required))
                    if queries == "seq" and layout == "varlen":  # the trivial delta kernel, once per head dim
                        pm, pw = T.PREPROCESS_CONFIG
                        cx = dict(
                            HEAD_DIM=D,
                            BLOCK_DP=T.next_pow2(bd + bdt),
                            BLOCK_M=pm,
                            IS_VARLEN=True,
                            ALIGN=_align(how, dtype),
                        )
                        sig = _attn_signature(T.KERNELS["preprocess"], cx, dtype)
                        cases.append(
                            dict(
                                name=f"preprocess-{_TY[dtype]}-D{D}-{how}-{pm}-w{pw}",
                                cc=cc,
                                family=fam,
                                op="attention",
                                kernel="preprocess",
                                dtype=_TY[dtype],
                                head_dim=D,
                                layout=layout,
                                queries=queries,
                                tile=str(pm),
                                num_warps=pw,
                                num_stages=1,
                                required=required,
                                fn=T.KERNELS["preprocess"],
                                signature=sig,
                                constexprs=cx,
                                aligned=how != "unaligned",
                            )
                        )
    return _dedupe(cases)


# ---------------------------------------------------------------------------------------------- patch embedding


def _pe_dtypes(dclass):
    return [torch.float32] if dclass == "fp32" else [torch.bfloat16, torch.float16]


def patch_embed_cases(ccs=AOT_CCS, siglip2_only=False):
    """Every variant `patch_embed_fwd` / `pos_embed_adjoint` can launch, per table entry, all required (spill-free):
    forward: weight dtype (bf16, fp16 for the 16-bit entries; fp32), pixel dtype (the weight's, or fp32 pixels
    under 16-bit weights: the processor's output, cast in the kernel), padded or packed, and the alignment the key
    implies: "aligned" (P=16: K 768; B/16, L/16, So400m/16) marks every pointer and K, D divisible by 16; the
    unaligned key compiles "pointers" (P=14: K 588, So400m/14: pointers and D divisible, K not) and "none"
    (nothing divisible). Adjoint: dY dtype, padded or packed, aligned or not, and IMGS_PER_PROG = 1 (a batch of
    at most ADJ_MAX_CHUNKS images: the launch passes that 1 as a constexpr) or more. G = 16 (256 position
    embeddings) in all four models. `siglip2_only` leaves out the degenerate one-image, one-patch adjoint."""
    from . import patch_embed_triton as pt

    cases = []

    def add(cc, fam, name, fn, sig, consts, entry, div16, required=True):
        (*_, nw, ns), hip = entry
        launch = _launch(fam, nw, ns, hip)
        cases.append(
            dict(
                name=f"{name}-w{nw}s{ns}{_hip_tag(launch)}",
                cc=cc,
                family=fam,
                op="patch_embed",
                kernel="fwd" if name.startswith("fwd-") else "adjoint",
                required=required,
                fn=fn,
                signature=sig,
                constexprs=consts,
                **launch,
                aligned=div16 or False,
            )
        )

    for cc in ccs:
        for fam in _families(cc):
            for (dclass, aligned), table_entry in pt.FWD_CONFIGS[fam].items():
                entry = split_entry(table_entry, 5)
                bm, bn, bk, _, _ = entry[0]
                for dtype in _pe_dtypes(dclass):
                    pixel_dtypes = [dtype] + [d for d in pt.KERNEL_PIXEL_DTYPES if d != dtype]
                    for xdt in pixel_dtypes:
                        for packed in (False, True):
                            t = "*" + _TY[dtype]
                            # padded launches pass the (int64) shapes tensor as the unread cu_seqlens pointer
                            sig = dict(
                                x="*" + _TY[xdt],
                                weight=t,
                                bias=t,
                                pos=t,
                                shapes="*i64",
                                cu_seqlens="*i32" if packed else "*i64",
                                y=t,
                                L="i32",
                                K="i32",
                                D="i32",
                                total_rows="i32",
                            )
                            consts = dict(
                                G=16,
                                BLOCK_G=16,
                                BLOCK_M=bm,
                                BLOCK_N=bn,
                                BLOCK_K=bk,
                                PACKED=packed,
                                DOT_FP32=False,
                                MAIN_PREC=pt.dot_precision(dtype),
                                POS_PREC=pt.pos_precision(dtype, fam),
                            )
                            ptrs = [n for n, ty in sig.items() if ty.startswith("*")]
                            for how, div16 in (
                                [("aligned", [*ptrs, "K", "D"])]
                                if aligned
                                else [("pointers", [*ptrs, "D"]), ("none", None)]
                            ):
                                add(
                                    cc,
                                    fam,
                                    f"fwd-{_TY[dtype]}-x{_TY[xdt]}-{bm}x{bn}x{bk}-"
                                    f"{'packed' if packed else 'padded'}-{how}",
                                    pt.KERNELS["fwd"],
                                    sig,
                                    consts,
                                    entry,
                                    div16,
                                )
            for dclass, table_entry in pt.ADJ_CONFIGS[fam].items():
                entry = split_entry(table_entry, 4)
                bm, bn, _, _ = entry[0]
                for dtype in _pe_dtypes(dclass):
                    for packed in (False, True):
                        for imgs1 in (False, True):
                            sig = dict(
                                dy="*" + _TY[dtype],
                                shapes="*i64",
                                cu_seqlens="*i32" if packed else "*i64",
                                dpos_part="*fp32",
                                B="i32",
                                L="i32",
                                D="i32",
                                IMGS_PER_PROG="i32",
                            )
                            consts = dict(
                                G=16,
                                BLOCK_G=16,
                                BLOCK_M=bm,
                                BLOCK_N=bn,
                                PACKED=packed,
                                POS_PREC=pt.adjoint_precision(dtype, fam),
                            )
                            if imgs1:
                                consts["IMGS_PER_PROG"] = 1
                                del sig["IMGS_PER_PROG"]
                            for aligned in (True, False):  # no alignment switch: a launch is either
                                div16 = [n for n in sig if n != "IMGS_PER_PROG"] if aligned else None
                                add(
                                    cc,
                                    fam,
                                    f"adj-{_TY[dtype]}-{bm}x{bn}-{'packed' if packed else 'padded'}-"
                                    f"imgs{'1' if imgs1 else 'N'}-{'aligned' if aligned else 'none'}",
                                    pt.KERNELS["adjoint"],
                                    sig,
                                    consts,
                                    entry,
                                    div16,
                                )
            if not siglip2_only:
                # a launch passes an int argument equal to 1 as a constexpr: one image of one patch
                entry = split_entry(pt.ADJ_CONFIGS[fam]["16bit"], 4)
                bm, bn, _, _ = entry[0]
                sig = dict(dy="*bf16", shapes="*i64", cu_seqlens="*i64", dpos_part="*fp32", D="i32")
                consts = dict(
                    G=16,
                    BLOCK_G=16,
                    BLOCK_M=bm,
                    BLOCK_N=bn,
                    POS_PREC=pt.adjoint_precision(torch.bfloat16, fam),
                    PACKED=False,
                    L=1,
                    B=1,
                    IMGS_PER_PROG=1,
                )
                add(
                    cc,
                    fam,
                    f"adj-bf16-L1-B1-{bm}x{bn}-padded",
                    pt.KERNELS["adjoint"],
                    sig,
                    consts,
                    entry,
                    [n for n, ty in sig.items() if ty.startswith("*")],
                    required=False,
                )
    return _dedupe(cases)


# ---------------------------------------------------------------------------------------------- sigmoid loss


def loss_cases(ccs=AOT_CCS, siglip2_only=False):
    """Every variant `sigmoid_loss_block_fwd` can launch, per table entry, all required (spill-free): dtype (bf16,
    fp16; fp32) x EVEN_K x HAS_POS (False: the ring's off-diagonal blocks) x STORE_G (False: no_grad, which
    passes the fp32 partials buffer as the unwritten G). EVEN_K (D % BLOCK_K == 0: d 768, 1024, 1152, the SigLIP2
    case) gets the divisibility-by-16 attributes a real launch gets (torch-allocated pointers, BLOCK_K | D);
    EVEN_K=False (e.g. d 72) compiles with none. scale and bias are fp32 (the launcher casts them).
    `siglip2_only` keeps EVEN_K=True."""
    from . import sigmoid_loss_triton as K

    cases = []
    for cc in ccs:
        for fam in _families(cc):
            for dclass, table_entry in K.CONFIGS[fam].items():
                (bm, bn, bk, nw, ns), hip = split_entry(table_entry, 5)
                launch = _launch(fam, nw, ns, hip)
                for dtype in _pe_dtypes(dclass):
                    t = _TY[dtype]
                    for even_k in (True, False):
                        for has_pos in (True, False):
                            for store_g in (True, False):
                                if siglip2_only and not even_k:
                                    continue
                                sig = dict(
                                    t="*" + t,
                                    i="*" + t,
                                    g="*" + (t if store_g else "fp32"),
                                    part="*fp32",
                                    scale="*fp32",
                                    bias="*fp32",
                                    M="i32",
                                    N="i32",
                                    D="i32",
                                    diag0="i32",
                                    s_t="i32",
                                    s_i="i32",
                                    s_g="i32",
                                    s_p="i32",
                                    g_mul="fp32",
                                )
                                consts = dict(
                                    BLOCK_M=bm,
                                    BLOCK_N=bn,
                                    BLOCK_K=bk,
                                    EVEN_K=even_k,
                                    HAS_POS=has_pos,
                                    STORE_G=store_g,
                                    DOT_FP32=False,
                                    PRECISION=K.dot_precision(dtype),
                                )
                                aligned = (
                                    ["t", "i", "g", "part", "scale", "bias", "D", "s_t", "s_i"] if even_k else False
                                )
                                cases.append(
                                    dict(
                                        name=f"{t}-even{even_k:d}-pos{has_pos:d}-g{store_g:d}-{bm}x{bn}x{bk}"
                                        f"-w{nw}s{ns}{_hip_tag(launch)}",
                                        cc=cc,
                                        family=fam,
                                        op="loss",
                                        kernel="fwd",
                                        required=True,
                                        fn=K.KERNELS["fwd"],
                                        signature=sig,
                                        constexprs=consts,
                                        **launch,
                                        aligned=aligned,
                                    )
                                )
    return _dedupe(cases)


def _in_ci(c) -> bool:
    """The CI tier, a subset of the SigLIP2 shapes sized to CI's budget (~1.3 CPU s per compile): bf16 in every
    layout; fp16, which compiles like bf16 but for the element type, in the varlen forward and backward; the
    packed patch embedding in bf16 and fp32 with pixels of the weight dtype, and in fp16 with fp32 pixels (P=16
    aligned, P=14 "pointers"), and its adjoint for batches of up to 32 images; the loss with and without its
    positive diagonal and gradient tile. The "default" table's attention entries, on the architectures whose own
    table differs, in bf16 varlen; D 96 in bf16 varlen only. Every other variant compiles in the full sweep
    (`SIGLIP2_AOT_FULL=1`) and the "siglip2" tier (`python -m siglip2.kernels.aot`).
    AMD targets take `_in_ci_amd`."""
    if is_amd(c["cc"]):
        return _in_ci_amd(c)
    if c["op"] == "attention" and c["family"] == "default":  # the default table where it is not the arch's own
        return c["dtype"] == "bf16" and c["layout"] == "varlen"
    if c["op"] == "attention" and c["head_dim"] == 96:  # g-opt's D 96 in bf16 varlen; the rest: tier "siglip2"
        return c["dtype"] == "bf16" and c["layout"] == "varlen"
    if c["op"] == "attention":
        return c["dtype"] == "bf16" or (c["layout"] == "varlen" and c["queries"] == "seq")
    if c["op"] == "patch_embed":
        n = c["name"]
        if n.startswith("fwd-"):
            # plus fp16 weights with the processor's fp32 pixels: the pair that spilled on sm_80/86 (full sweep)
            same_x = n.startswith(("fwd-bf16-xbf16-", "fwd-fp32-xfp32-", "fwd-fp16-xfp32-"))
            return same_x and "-packed-" in n and ("-aligned-" in n or "-pointers-" in n)
        return n.startswith(("adj-bf16-", "adj-fp32-")) and "-packed-imgs1-aligned-" in n
    return c["name"].startswith("bf16") or "-pos1-g1-" in c["name"]


def _in_ci_amd(c) -> bool:
    """The CI tier on an AMD target: bf16 attention, sequence queries, varlen and padded+mask (the layouts with the
    most live registers; fp16 differs only in the element type), D 64, 72 and 96, all three kernels and the
    delta kernel; the packed bf16 patch embedding (P=16 aligned, P=14 pointers) and its adjoint; the loss with
    its positive diagonal and gradient tile. The "amd" table (an unknown AMD arch: CDNA's tiles without HIP
    options), where it is not the arch's own, in bf16 varlen sequence attention. CI runs the larger "amd" tier
    (`_in_amd_tier`) instead, with SIGLIP2_AOT_AMD=full; the rest of the SigLIP2 tier with SIGLIP2_AOT_FULL=1."""
    if c["family"] == "amd" and family(c["cc"]) != "amd":
        return c["op"] == "attention" and c["dtype"] == "bf16" and c["layout"] == "varlen" and c["queries"] == "seq"
    if c["op"] == "attention":
        return c["dtype"] == "bf16" and c["queries"] == "seq" and c["layout"] != "padded"
    n = c["name"]
    if c["op"] == "patch_embed":
        if n.startswith("fwd-"):
            return n.startswith("fwd-bf16-xbf16-") and "-packed-" in n and ("-aligned-" in n or "-pointers-" in n)
        return n.startswith("adj-bf16-") and "-packed-imgs1-aligned-" in n
    return n.startswith("bf16-even1-pos1-g1-")


def _in_amd_tier(c) -> bool:
    """The "amd" tier (CI's AMD check, SIGLIP2_AOT_AMD=full): on an AMD target every SigLIP2 case of the arch's own
    table (all dtypes, layouts, head dims, the pooling head, every patch-embedding and loss variant), and the "amd"
    fallback table where it is another table in its CI subset (`_in_ci_amd`): the whole SigLIP2 tier of both
    tables is ~2x the compiles (564 for gfx942 + gfx950, ~4 min cold on 2 cores; SIGLIP2_AOT_FULL=1 runs it)."""
    return not is_amd(c["cc"]) or c["family"] == family(c["cc"]) or _in_ci_amd(c)


TIERS = ("ci", "amd", "siglip2", "all")


def all_cases(ccs=AOT_CCS, tier="siglip2"):
    """tier "ci" (tests/test_aot.py in CI), "amd" (the SigLIP2 tier with the AMD fallback table in its CI subset:
    `_in_amd_tier`), "siglip2" (every required case) or "all" (every table entry)."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
    only = tier != "all"
    cases = attention_cases(ccs, only) + patch_embed_cases(ccs, only) + loss_cases(ccs, only)
    if tier == "ci":
        return [c for c in cases if _in_ci(c)]
    return [c for c in cases if tier != "amd" or _in_amd_tier(c)]
