"""Ahead-of-time compile of every launch-config table for sm_80, 86, 89, 90, 100 and 120 (no GPU needed).

The compute capability comes from the compile target (kernels/aot_compile.py), never from this machine. The cases
(kernels/aot_cases.py) are the table entries of each architecture's family plus the "default" table (what an
unknown architecture gets), each compiled as a real launch specializes it.
- `test_aot_siglip2_shapes` (CI): the CI tier of the shapes SigLIP2 runs (kernels/aot_cases.py `_in_ci`:
  bf16 in every layout, fp16 varlen; D 96 bf16 varlen). Fails on a compile error, on shared memory over the
  architecture's per-block limit, and on any register spill (STACK or LOCAL > 0).
- `test_aot_all_configs` (`SIGLIP2_AOT_FULL=1`, ~30 min on 2 cores): every SigLIP2 shape (fp16 in every layout
  too) with the same rules, and every other table entry at every head-dim class, aligned and unaligned, which
  fails only on a compile error or shared memory: their spills are printed as a table.
- `test_aot_amd_siglip2_shapes` (CI): gfx942 and gfx950: no VGPR/SGPR spill, LDS within the family's limit,
  every tl.dot on MFMA. Tier "ci" by default (kernels/aot_cases.py `_in_ci_amd`), tier "amd" with
  `SIGLIP2_AOT_AMD=full` (what .ci/run sets: every SigLIP2 case of both archs' own tables, ~2 min cold on 2
  cores), the whole SigLIP2 tier with SIGLIP2_AOT_FULL=1 (the unknown-AMD table in every variant too).
- `test_aot_amd_other_archs_forward` (SIGLIP2_AOT_FULL=1): gfx90a, gfx1100, gfx1201, the forward kernels of their
  own tables, the same rules (spills fail).
All run under whichever triton is importable; .ci/run runs this file under a second version (triton 3.8).
Standalone: `python -m siglip2.kernels.aot [--tier ci|siglip2|all] [--ccs 80,120] [--all]`.
"""

import os

import pytest

pytest.importorskip("triton")

# private: kernels/_configs.py (the architecture families and their tables) is what these tests check
from siglip2.kernels import _configs


def test_family_lookup():
    assert [_configs.family(cc) for cc in _configs.AOT_CCS] == ["sm80", "sm86", "sm86", "sm90", "sm100", "sm120"]
    assert _configs.family(75) == _configs.family(130) == "default"  # unknown: the table that fits everywhere
    assert _configs.smem_limit(120) == _configs.smem_limit(86) == 99 * 1024
    assert _configs.smem_limit(80) == 163 * 1024 and _configs.smem_limit(100) == 227 * 1024
    from siglip2.kernels import attention_triton as T
    from siglip2.kernels import patch_embed_triton as P
    from siglip2.kernels import sigmoid_loss_triton as L

    for tables in (T.FWD_CONFIGS, T.BWD_CONFIGS, P.FWD_CONFIGS, P.ADJ_CONFIGS, L.CONFIGS):
        assert set(tables) == set(_configs.FAMILIES)
        assert all(set(t) == set(tables["default"]) for t in tables.values())


def test_check_tables_names_the_missing_entry():
    with pytest.raises(KeyError, match="sm120"):
        _configs.check_tables("op", {f: {1: 0} for f in _configs.FAMILIES if f != "sm120"})
    with pytest.raises(KeyError, match="keys differ"):
        _configs.check_tables("op", {f: ({1: 0, 2: 0} if f == "sm90" else {1: 0}) for f in _configs.FAMILIES})


def _fp32_on_rdna(r) -> bool:
    """An fp32 model's case on RDNA: its exact ("ieee") fp32 dots run on FMA by design (RDNA's WMMA has no fp32
    operands; 16-bit models' fp32 position dots take bf16x3, on WMMA)."""
    return _configs.family(r["cc"]) == "rdna" and "fp32" in r["name"].split("-")[:2]


def _run(tier, ccs=_configs.AOT_CCS, kernels=None, spills_fail=True, own_family=False):
    """Compile `tier`'s cases for `ccs` (only the `kernels` roles; only each arch's own family's table with
    `own_family`) and fail on a compile error, LDS/shared memory over the limit, a dot off the matrix cores (but
    `_fp32_on_rdna`), or (`spills_fail`) a spill in a SigLIP2 shape."""
    import triton

    from siglip2.kernels.aot_cases import all_cases
    from siglip2.kernels.aot_compile import aot_run, spill_table

    cases = [
        c
        for c in all_cases(ccs, tier=tier)
        if (kernels is None or c.get("kernel") in kernels)
        and (not own_family or c["family"] == _configs.family(c["cc"]))
    ]
    res = aot_run(cases)
    fail = [
        r
        for r in res
        if "error" in r
        or r["shared"] > _configs.smem_limit(r["cc"])
        or (r.get("fma_dots") and not _fp32_on_rdna(r))
        or (spills_fail and r["required"] and (r["stack"] or r["local"]))
    ]
    spills = [r for r in res if "error" not in r and not (spills_fail and r["required"]) and (r["stack"] or r["local"])]
    print(f"triton {triton.__version__}: {len(res)} cases, {sum(r['cpu'] for r in res):.0f} CPU s of compiling")
    if spills:
        print(f"configs that spill ({len(spills)}, not a failure: outside the SigLIP2 shapes, or an unchecked arch):")
        print(spill_table(spills))
    assert not fail, (
        "configs that fail to compile, exceed shared memory, or spill in a SigLIP2 shape:\n"
        + spill_table(fail)
        + "\n"
        + "\n".join(r.get("ptxas", "") for r in fail if r.get("ptxas"))
    )


@pytest.mark.slow  # ~3 min of compiling on 2 cores with a cold Triton cache
def test_aot_siglip2_shapes():
    _run("ci")


@pytest.mark.skipif(
    os.environ.get("SIGLIP2_AOT_FULL", "0") in ("", "0"),
    reason="the full sweep of every config x arch takes ~30 min: set SIGLIP2_AOT_FULL=1",
)
def test_aot_all_configs():
    _run("all")


def _amd_tier() -> str:
    if os.environ.get("SIGLIP2_AOT_FULL", "0") not in ("", "0"):
        return "siglip2"
    amd = os.environ.get("SIGLIP2_AOT_AMD", "ci")
    if amd not in ("ci", "full"):
        raise ValueError(f"SIGLIP2_AOT_AMD must be 'ci' or 'full', got {amd!r}")
    return "amd" if amd == "full" else "ci"


@pytest.mark.slow
def test_aot_amd_siglip2_shapes():
    """gfx942 (MI300X) and gfx950 (MI355X), compiled with each entry's HIP options (waves_per_eu,
    matrix_instr_nonkdim): no VGPR or SGPR spill, LDS within the family's limit, every tl.dot on MFMA.
    SIGLIP2_AOT_AMD=full (CI, .ci/run, under triton 3.9 and 3.8): tier "amd", every SigLIP2 case of both archs'
    own tables (bf16 and fp16, every layout, D 64/72/96, the pooling head, every patch-embedding and loss variant:
    288 compiles, 110-160 s cold on 2 cores), plus the unknown-AMD table ("amd": the same tiles with Triton's
    default options) in bf16 varlen attention. Left to SIGLIP2_AOT_FULL=1 (tier "siglip2", 564 compiles, ~4 min
    cold): that table's other variants. Without either: tier "ci" (`_in_ci_amd`, 47 compiles per arch)."""
    _run(_amd_tier(), _configs.AOT_ARCHS)


@pytest.mark.skipif(
    os.environ.get("SIGLIP2_AOT_FULL", "0") in ("", "0"),
    reason="gfx90a, gfx1100, gfx1201 forward kernels: set SIGLIP2_AOT_FULL=1",
)
def test_aot_amd_other_archs_forward():
    """gfx90a (MI250), gfx1100 (RDNA3), gfx1201 (RDNA4): the forward kernels (attention, patch embedding, loss) of
    the SigLIP2 shapes in each arch's own table compile spill-free, within LDS, on the matrix cores (MFMA / WMMA;
    an fp32 model's exact dots on RDNA excepted: no fp32 WMMA). The backward kernels are not checked here
    (`python -m siglip2.kernels.aot --ccs gfx1100,gfx1201` prints them: gfx1100's dK/dV and dQ spill 28-395 VGPRs,
    gfx1201 and gfx90a are clean; docs/design.md)."""
    _run("siglip2", _configs.AOT_ARCHS_OTHER, kernels=("fwd",), own_family=True)
