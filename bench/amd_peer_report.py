"""MFMA and register use of the attention kernels on gfx942 next to flash-attention's Triton AMD backend (issue 29).

A static proxy, not a timing: it needs no GPU and no ROCm. Triton compiles for gfx942 (wave 64) in-process; the
amdgcn text gives VGPRs, SGPRs, spills and LDS (kernels/aot_compile.py `amdgcn_resource_usage`), and the loop
comments LLVM's AMDGPU printer writes ("=>This Inner Loop Header", "in Loop: Header=BB0_12") tell which basic
blocks make up each innermost loop. The key loop of a kernel is its innermost loop with the most MFMAs (ties: the
one with fewest instructions, i.e. flash-attention's unmasked full-block loop rather than its masked last block);
its v_mfma count is the work per key block (BLOCK_M x BLOCK_N scores) of one wave. Ours: the launch the launcher
makes on gfx942 (kernels/aot_cases.py `attention_kernel_case`: bf16, varlen, `fwd_config`/`bwd_config` of the
gfx942 table). Peer: `attn_fwd` (fwd_prefill.py) and `bwd_kernel_fused_noncausal` (bwd.py, BWD_MODE "fused":
dK/dV and dQ in one kernel, one loop each) of flash-attention's `flash_attn/flash_attn_triton_amd`, with every
config its own gfx942 list holds for an MI300X (304 CUs; the backward list is autotuned at run time, so each entry
is compiled), bf16, varlen, no causal, no dropout, no alibi, and the arguments its launcher passes, specialized as
a Triton launch would (ints equal to 1 become constexprs, multiples of 16 get the divisibility hint). It pads the
head dim to a power of two (72 -> 128: BLOCK_DMODEL, HEAD_DIM_QK) and masks the tail; ours splits 72 as 64 + 16.

"useful %" is 4·BM·BN·D (forward: QK^T and PV), 8·BM·BN·D (dK/dV) or 6·BM·BN·D (dQ) over the FLOPs of the
loop's MFMAs (2·m·n·k each, times the waves): what the matrix cores spend on the true head dim, not on padding or
on tiles that several waves compute alike. Occupancy is what the VGPRs allow on CDNA3 (512 per SIMD lane,
granule 8, at most 8 waves); LDS and the waves_per_eu option can lower it further.

    python bench/amd_peer_report.py /work/.mirror/Dao-AILab+flash-attention/repo bench/results/amd-peer

The first argument is a flash-attention checkout or bare mirror (`--rev`: default the newest commit that still
holds flash_attn/flash_attn_triton_amd; the backend moved to the aiter submodule after it). Writes report.md and
results.json to the output folder. `--ours-only` skips the peer, its path then unused ("-"; the test does so).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile

PEER_DIR = "flash_attn/flash_attn_triton_amd"
PEER_FILES = ("utils.py", "common.py", "fwd_prefill.py", "bwd.py")
PKG = "fa_triton_amd_peer"
HEADS = {64: 12, 72: 16}  # B/16 (768 / 12) and So400m (1152 / 16)
TOKENS = 4096  # total tokens of the varlen batch (LSE / delta row stride), e.g. 16 images of 256 patches
MAX_SEQLEN = 256  # SigLIP2 NaFlex's default patch budget
USEFUL_DOTS = {"fwd": 2, "dkdv": 4, "dq": 3}  # tl.dots of BM x BN x D per key block

_BLOCK = re.compile(r"^(?:\.LBB(\d+_\d+):|; %bb\.\d+:)(.*)$")
_HEADER = re.compile(r"=>\s*This (Inner )?Loop Header: Depth=\d+")
_MEMBER = re.compile(r"in Loop: Header=BB(\d+_\d+)")
_MFMA = re.compile(r"^v_mfma_\w*?_(\d+)x(\d+)x(\d+)")


def innermost_loops(amdgcn: str) -> dict[str, list[str]]:
    """{loop header ("0_12"): the mnemonics of its basic blocks in layout order} for every innermost loop of the
    first function, read from LLVM's loop comments on the block labels."""
    lines: list[str] = []
    for line in amdgcn.splitlines():  # a label's comment goes on over the comment-only lines right after it
        if lines and _BLOCK.match(lines[-1]) and line.lstrip().startswith(";") and not _BLOCK.match(line):
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    loops: dict[str, list[str]] = {}
    inner, current = set(), None
    for line in lines:
        m = _BLOCK.match(line)
        if m:
            label, comment = m.group(1), m.group(2)
            header, member = _HEADER.search(comment), _MEMBER.search(comment)
            current = label if (label and header) else member.group(1) if member else None
            if label and header and header.group(1):
                inner.add(label)
            if current is not None:
                loops.setdefault(current, [])
            continue
        if line.startswith(".Lfunc_end"):
            break
        s = line.strip()
        if current is not None and s and not s.startswith((";", ".")) and not s.endswith(":"):
            loops[current].append(s.split()[0])
    return {h: ops for h, ops in loops.items() if h in inner}


def mfma_flops(mnemonic: str) -> int:
    """FLOPs of one wave's MFMA: 'v_mfma_f32_32x32x8_bf16' -> 2·32·32·8 (single-block shapes, as bf16 uses)."""
    m = _MFMA.match(mnemonic)
    if m is None:
        raise ValueError(f"not an MFMA: {mnemonic!r}")
    a, b, c = (int(g) for g in m.groups())
    return 2 * a * b * c


def loop_stats(ops: list[str]) -> dict:
    mfma = [o for o in ops if o.startswith("v_mfma")]
    return dict(
        instructions=len(ops),
        mfma=len(mfma),
        mfma_shapes=dict(collections.Counter(mfma)),
        mfma_flops=sum(mfma_flops(o) for o in mfma),
        exp=sum(o.startswith("v_exp") for o in ops),
    )


def key_loops(amdgcn: str) -> list[dict]:
    """Stats of the innermost loops holding MFMAs, in layout order."""
    out = []
    for header, ops in innermost_loops(amdgcn).items():
        st = loop_stats(ops)
        if st["mfma"]:
            out.append(dict(st, header=header))
    return out


def main_loop(loops: list[dict]) -> dict:
    """The hot key loop: most MFMAs, then fewest instructions (the unmasked full-block path)."""
    if not loops:
        raise ValueError("no innermost loop with an MFMA in the amdgcn")
    return min(loops, key=lambda s: (-s["mfma"], s["instructions"]))


def occupancy(vgprs: int) -> int:
    """Waves per SIMD the VGPR count allows on CDNA3 (512 per lane, allocated in granules of 8; at most 8)."""
    return min(8, 512 // (-(-max(vgprs, 1) // 8) * 8))


def extract_peer(src: str, dest: str, rev: str | None = None) -> str:
    """Copy flash-attention's Triton AMD files into package `dest/PKG` (an empty __init__.py, so the v2/v3
    interfaces and the decode kernel stay out); return the commit. `src`: a checkout or a (bare) git dir."""
    pkg = os.path.join(dest, PKG)
    os.makedirs(pkg, exist_ok=True)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    git_dir = src if os.path.exists(os.path.join(src, "objects")) else os.path.join(src, ".git")
    if os.path.isdir(os.path.join(src, PEER_DIR)) and rev is None:
        for f in PEER_FILES:
            with open(os.path.join(src, PEER_DIR, f)) as i, open(os.path.join(pkg, f), "w") as o:
                o.write(i.read())
        r = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], capture_output=True, text=True)
        return r.stdout.strip() or "unknown"

    def git(*a):
        return subprocess.run(["git", "--git-dir", git_dir, *a], capture_output=True, text=True, check=True).stdout

    if rev is None:  # the newest commit holding the folder: the parent of the one that removed it, if removed
        rev = git("rev-list", "-1", "HEAD", "--", f"{PEER_DIR}/fwd_prefill.py").strip()
        if not git("ls-tree", rev, f"{PEER_DIR}/fwd_prefill.py").strip():
            rev = rev + "^"
    rev = git("rev-parse", rev).strip()
    for f in PEER_FILES:
        with open(os.path.join(pkg, f), "w") as o:
            o.write(git("show", f"{rev}:{PEER_DIR}/{f}"))
    return rev


def import_peer(dest: str, cu_count: int = 304):
    """Import the peer's kernels and evaluate its gfx942 config lists. Its import-time config lists call
    `get_arch()`, which needs a GPU, unless autotuning is on: so import with FLASH_ATTENTION_TRITON_AMD_AUTOTUNE=1,
    then call the lists' functions with autotune off and a gfx942 stand-in for `get_arch` (kernel code untouched)."""
    import importlib

    import triton

    os.environ["FLASH_ATTENTION_TRITON_AMD_AUTOTUNE"] = "1"
    sys.path.insert(0, dest)
    # @triton.autotune as a no-op while importing: only the @triton.jit kernels under it are compiled here, and
    # triton >= 3.4 rejects bwd.py's `_bwd_preprocess` autotune key "ACTUAL_HEAD_DIM" (not one of its arguments)
    autotune, triton.autotune = triton.autotune, lambda *a, **k: lambda fn: fn
    try:
        utils = importlib.import_module(f"{PKG}.utils")
        fwd = importlib.import_module(f"{PKG}.fwd_prefill")
        bwd = importlib.import_module(f"{PKG}.bwd")
    finally:
        triton.autotune = autotune

    class Gfx942(utils.GpuArch):
        cu_count = 0

    Gfx942.cu_count = cu_count
    fwd.get_arch = bwd.get_arch = lambda: Gfx942(name="gfx942", family="cdna")
    return fwd, bwd, utils, fwd.get_fwd_prefill_configs(False), bwd.get_bwd_configs(False)[2]


def launch_specialization(fn, args: dict, constexprs: dict):
    """(signature, constexprs, aligned names) as a launch with `args` builds them: a str value is a pointer of
    that type (16-byte aligned, as torch allocates), any other value goes through Triton's own specializer."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    sig, cx, aligned = {}, dict(constexprs), []
    for n in fn.arg_names:
        if n in cx:
            continue
        v = args[n]
        if isinstance(v, str):
            sig[n], attr = v, "D"
        else:
            ty, attr = native_specialize_impl(BaseBackend, v, False, True, True)
            if ty == "constexpr":
                cx[n] = v
                continue
            sig[n] = ty
        if attr == "D":
            aligned.append(n)
    return sig, cx, aligned


def _varlen_strides(names, D, H):
    """thd tensors (total, H, D), contiguous: batch stride 0, head D, token H·D, dim 1."""
    return dict(zip(names, (0, D, H * D, 1)))


def peer_fwd_args(utils, D):
    H, ptr = HEADS[D], "*bf16"
    a: dict = dict(Q=ptr, K=ptr, V=ptr, LSE="*fp32", Out=ptr, cu_seqlens_q="*i32", cu_seqlens_k="*i32")
    for n in ("bias", "Q_Descale", "K_Descale", "V_Descale", "SD_MASK", "ALIBI_SLOPES", "seqused_q", "seqused_k"):
        a[n] = None
    a.update(dict.fromkeys(("stride_q_descale_z", "stride_k_descale_z", "stride_v_descale_z")))
    for t, (m, d) in dict(q="mk", k="nk", v="kn", o="mn").items():
        a.update(_varlen_strides([f"stride_{t}z", f"stride_{t}h", f"stride_{t}{m}", f"stride_{t}{d}"], D, H))
    for n in ("bz", "bh", "bm", "bn", "az", "ah", "sz", "sh", "sm", "sn"):
        a[f"stride_{n}"] = 0
    a.update(stride_lse_z=0, stride_lse_h=TOKENS, stride_lse_m=1, dropout_p=0.0)
    a.update(philox_seed=utils.PHILOX_SEED, philox_offset_base=utils.PHILOX_OFFSET)
    pad = max(16, 1 << (D - 1).bit_length())
    cx: dict = dict(HQ=H, HK=H, ACTUAL_BLOCK_DMODEL_QK=D, ACTUAL_BLOCK_DMODEL_V=D, MAX_SEQLENS_Q=MAX_SEQLEN)
    cx.update(MAX_SEQLENS_K=MAX_SEQLEN, SM_SCALE=D**-0.5, IS_CAUSAL=False, USE_SLIDING_WINDOW=False)
    cx.update(WINDOW_SIZE_LEFT=-1, WINDOW_SIZE_RIGHT=-1, IS_VARLEN=True, BLOCK_DMODEL_QK=pad, BLOCK_DMODEL_V=pad)
    cx.update(USE_BIAS=False, USE_ALIBI=False, ENABLE_DROPOUT=False, USE_EXP2=True, RETURN_SCORES=False)
    cx.update(IS_FP8=False, FP8_MAX=None, FP8_P_DESCALE=False, USE_SEQUSED=False, FORCE_MASKING=False)
    return a, cx, pad


def peer_bwd_args(utils, D):
    H, ptr = HEADS[D], "*bf16"
    a: dict = dict(Q=ptr, K=ptr, V=ptr, DO=ptr, DQ=ptr, DK=ptr, DV=ptr, M="*fp32", Delta="*fp32", sm_scale=D**-0.5)
    a.update(cu_seqlens_q="*i32", cu_seqlens_k="*i32", max_seqlen_q=MAX_SEQLEN, max_seqlen_k=MAX_SEQLEN)
    for n in ("seqused_q", "seqused_k", "Dropout_mask", "Alibi_slopes", "Descale_q", "Descale_k", "Descale_v"):
        a[n] = None
    a.update(dict.fromkeys(("stride_descale_q_z", "stride_descale_k_z", "stride_descale_v_z")))
    for t, (m, d) in dict(q="md", k="nd", v="nd", dq="md", dk="nd", dv="nd", do="md").items():
        a.update(_varlen_strides([f"stride_{t}b", f"stride_{t}h", f"stride_{t}{m}", f"stride_{t}{d}"], D, H))
    for t in ("lse", "delta"):  # (Hq, total) fp32
        a.update({f"stride_{t}_b": 0, f"stride_{t}_h": TOKENS, f"stride_{t}_m": 1})
    a.update(dict.fromkeys(("stride_dropoutb", "stride_dropouth", "stride_dropoutm", "stride_dropoutn"), 0))
    a.update(stride_az=0, stride_ah=0, HQ=H, HK=H, dropout_p=0.0)
    a.update(philox_seed=utils.PHILOX_SEED, philox_offset_base=utils.PHILOX_OFFSET)
    pad = max(32, 1 << (D - 1).bit_length())
    cx: dict = dict(HEAD_DIM_QK=pad, HEAD_DIM_V=pad, ACTUAL_HEAD_DIM_QK=D, ACTUAL_HEAD_DIM_V=D, ENABLE_DROPOUT=False)
    cx.update(IS_VARLEN=True, USE_ALIBI=False, USE_EXP2=True, IS_FP8=False, FP8_MAX=None, USE_SEQUSED=False)
    cx.update(DEBUG_TRITON=False, DEBUG_TRITON_DETAIL=False)
    return a, cx, pad


def _row(impl, kname, D, head_tile, tile, cfg, u, loop, bm, bn, waves):
    """One table row. `exp_per_wave_if_split`: the v_exp per wave and lane if the waves split the scores (plus
    one per row block for the rescale in the forward); more in the loop means waves computing the same scores."""
    row = dict(impl=impl, kernel=kname, head_dim=D, head_tile=head_tile, tile=tile, config=cfg, loop=loop)
    row.update(vgprs=u["regs"], sgprs=u["sgprs"], vgpr_spills=u["stack"], sgpr_spills=u["local"], lds=u["shared"])
    row.update(waves_per_simd=occupancy(u["regs"]), mfma_total=u["mfma"], mfma_per_key_block=loop["mfma"] * waves)
    row["useful_mfma_fraction"] = 2 * USEFUL_DOTS[kname] * bm * bn * D / (loop["mfma_flops"] * waves)
    row["exp_per_wave_if_split"] = bm * bn / (64 * waves)
    row["instr_per_1k_scores"] = loop["instructions"] * waves * 1024 / (bm * bn)
    return row


def _compile(fn, sig, cx, warps, stages, aligned, amd_options=None):
    from siglip2.kernels.aot_compile import aot_compile

    u = aot_compile(fn, sig, cx, "gfx942", warps, stages, aligned, keep_asm=True, amd_options=amd_options)
    return u, key_loops(u.pop("amdgcn"))


def ours_rows(head_dims, kernels):
    import torch

    from siglip2.kernels.aot_cases import attention_kernel_case

    rows = []
    for D in head_dims:
        for k in kernels:
            c = attention_kernel_case(k, "gfx942", D, torch.bfloat16)
            opts = c.get("amd_options") or {}  # the HIP options the launcher passes on gfx942 (same table entry)
            sig, cx, w, st = c["signature"], c["constexprs"], c["num_warps"], c["num_stages"]
            u, loops = _compile(c["fn"], sig, cx, w, st, c["aligned"], opts)
            head = f"{c['block_d']}+{c['block_dt']}" if c["block_dt"] else str(c["block_d"])
            cfg = f"w{w}s{st}" + (f" wpe{opts['waves_per_eu']}" if "waves_per_eu" in opts else "")
            cfg += f" nonk{opts['matrix_instr_nonkdim']}" if "matrix_instr_nonkdim" in opts else ""
            loop = dict(main_loop(loops), all_loops=loops)
            rows.append(_row("ours", k, D, head, c["tile"], cfg, u, loop, c["block_m"], c["block_n"], c["num_warps"]))
    return rows


def _peer_compile(fn, args, cx0, c):
    """Compile the peer's kernel with triton.Config `c`: its kernel constexprs and its HIP options (waves_per_eu,
    matrix_instr_nonkdim), as the autotuner would launch it."""
    kw = dict(c.kwargs)
    opts = {k: kw.pop(k) for k in ("waves_per_eu", "matrix_instr_nonkdim", "kpack") if k in kw}
    sig, cx, aligned = launch_specialization(fn, args, dict(cx0, **kw))
    u, loops = _compile(fn, sig, cx, c.num_warps, c.num_stages, aligned, opts)
    cfg = f"w{c.num_warps}s{c.num_stages} wpe{opts.get('waves_per_eu', 0)}"
    return u, loops, kw, cfg + (f" nonk{opts['matrix_instr_nonkdim']}" if "matrix_instr_nonkdim" in opts else "")


def peer_rows(dest, head_dims, kernels, cu_count=304):
    from siglip2.kernels.aot_compile import jit_function

    fwd, bwd, utils, fwd_cfgs, bwd_cfgs = import_peer(dest, cu_count)
    rows = []
    for D in head_dims:
        for c in fwd_cfgs if "fwd" in kernels else ():
            args, cx0, pad = peer_fwd_args(utils, D)
            u, loops, kw, cfg = _peer_compile(jit_function(fwd.attn_fwd), args, cx0, c)
            bm, bn, loop = kw["BLOCK_M"], kw["BLOCK_N"], dict(main_loop(loops), all_loops=loops)
            rows.append(_row("flash-attn", "fwd", D, str(pad), f"{bm}x{bn}", cfg, u, loop, bm, bn, c.num_warps))
        for c in bwd_cfgs if {"dkdv", "dq"} & set(kernels) else ():
            args, cx0, pad = peer_bwd_args(utils, D)
            u, loops, kw, cfg = _peer_compile(jit_function(bwd.bwd_kernel_fused_noncausal), args, cx0, c)
            if len(loops) != 2:
                raise ValueError(f"fused backward: expected a dK/dV and a dQ loop, found {len(loops)}")
            name = f"fused {kw['BLOCK_M1']}x{kw['BLOCK_N1']}/{kw['BLOCK_M2']}x{kw['BLOCK_N2']}"
            # the dK/dV part comes first in the kernel and in the code's layout; the exp counts confirm (results)
            for k, loop, bm, bn in zip(
                ("dkdv", "dq"), loops, (kw["BLOCK_M1"], kw["BLOCK_M2"]), (kw["BLOCK_N1"], kw["BLOCK_N2"])
            ):
                if k in kernels:
                    row = _row(
                        "flash-attn",
                        k,
                        D,
                        str(pad),
                        f"{bm}x{bn}",
                        cfg,
                        u,
                        dict(loop, all_loops=loops),
                        bm,
                        bn,
                        c.num_warps,
                    )
                    rows.append(dict(row, kernel_name=name))
    return rows


def _shapes(loop) -> str:
    return " + ".join(f"{n}x {'x'.join(_MFMA.match(s).groups())}" for s, n in loop["mfma_shapes"].items())


def table(rows) -> str:
    out = [
        "| kernel | impl | D (tile D) | BMxBN, config | VGPR / SGPR | spills V/S | LDS KB | waves/SIMD | MFMA total "
        "| key loop: MFMA per wave | MFMA per key block | useful MFMA | loop instr. per 1k scores |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (("fwd", "dkdv", "dq").index(r["kernel"]), r["head_dim"], r["impl"] != "ours")):
        impl = r["impl"] + (" (fused)" if "kernel_name" in r else "")
        out.append(
            f"| {r['kernel']} | {impl} | {r['head_dim']} ({r['head_tile']}) | {r['tile']} {r['config']} "
            f"| {r['vgprs']} / {r['sgprs']} | {r['vgpr_spills']}/{r['sgpr_spills']} | {r['lds'] / 1024:g} "
            f"| {r['waves_per_simd']} | {r['mfma_total']} | {_shapes(r['loop'])} | {r['mfma_per_key_block']} "
            f"| {100 * r['useful_mfma_fraction']:.0f}% | {r['instr_per_1k_scores']:.0f} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("flash_attention", nargs="?", help="flash-attention checkout or bare git mirror")
    ap.add_argument("out", nargs="?", default=None, help="folder for report.md and results.json")
    ap.add_argument("--rev", default=None, help="flash-attention commit (default: the newest with the AMD backend)")
    ap.add_argument("--head-dims", default="64,72")
    ap.add_argument("--kernels", default="fwd,dkdv,dq")
    ap.add_argument("--cu-count", type=int, default=304, help="selects the peer's gfx942 config list (MI300X: 304)")
    ap.add_argument("--ours-only", action="store_true")
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # helpers of interpreted kernels cannot be compiled
    import triton

    dims, kernels = tuple(int(d) for d in args.head_dims.split(",")), tuple(args.kernels.split(","))
    rows, commit = ours_rows(dims, kernels), None
    if not args.ours_only:
        if not args.flash_attention:
            ap.error("give the flash-attention checkout or mirror, or --ours-only")
        with tempfile.TemporaryDirectory() as d:
            commit = extract_peer(args.flash_attention, d, args.rev)
            rows += peer_rows(d, dims, kernels, args.cu_count)
    md = table(rows)
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        cmd = "python bench/amd_peer_report.py " + " ".join(argv if argv is not None else sys.argv[1:])
        meta: dict = dict(date=datetime.date.today().isoformat(), triton=triton.__version__, target="gfx942 (wave 64)")
        meta.update(flash_attention_commit=commit, flash_attention_path=PEER_DIR, peer_cu_count=args.cu_count)
        meta.update(command=cmd, heads=HEADS, total_tokens=TOKENS, max_seqlen=MAX_SEQLEN, dtype="bf16, varlen")
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
        with open(os.path.join(args.out, "report.md"), "w") as f:
            f.write("# Attention on gfx942: ours vs flash-attention's Triton AMD backend (static proxy)\n\n")
            f.write("\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n\n" + md + "\n\n## Method\n\n")
            f.write(__doc__.split("\n\n    python")[0] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
