"""bench/amd_peer_report.py: the amdgcn loop finder on a fixture, and one gfx942 compile of our forward (no GPU).

The fixture has the shapes LLVM's AMDGPU printer gives loops: a rotated loop whose latch block comes before its
header, a nested loop whose header comment runs over the next lines ("Parent Loop ...", "=>  This Inner Loop
Header"), and an outer loop whose own blocks must not be counted as a key loop. The compile (~5 s) checks that the
key loop of the real forward holds at least the work of its two dots (useful MFMA fraction <= 1: a wrong loop, or a
wrong FLOP count per MFMA, breaks it) and that the launch config does not spill.
"""

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "bench")
sys.path.insert(0, BENCH)

FIXTURE = """\
attn_fwd:
; %bb.0:
\ts_load_dwordx2 s[0:1], s[4:5], 0x0
\tv_mfma_f32_32x32x8_bf16 v[0:15], v[16:17], v[18:19], 0
\ts_branch .LBB0_2
.LBB0_1:                                ;   in Loop: Header=BB0_2 Depth=1
\tv_mfma_f32_32x32x8_bf16 v[0:15], v[16:17], v[18:19], v[0:15]
\tv_exp_f32_e32 v20, v20
.LBB0_2:                                ; =>This Inner Loop Header: Depth=1
\tv_mfma_f32_16x16x16_bf16 v[0:3], v[16:17], v[18:19], v[0:3]
\ts_cbranch_scc1 .LBB0_1
; %bb.3:
\ts_mov_b32 s2, 0
.LBB0_4:                                ; =>This Loop Header: Depth=1
                                        ;     Child Loop BB0_5 Depth 2
\tv_mfma_f32_32x32x8_bf16 v[0:15], v[16:17], v[18:19], v[0:15]
.LBB0_5:                                ;   Parent Loop BB0_4 Depth=1
                                        ; =>  This Inner Loop Header: Depth=2
\tv_exp_f32_e32 v21, v21
\tv_mfma_f32_16x16x16_bf16 v[0:3], v[16:17], v[18:19], v[0:3]
\ts_cbranch_scc1 .LBB0_5
; %bb.6:                                ;   in Loop: Header=BB0_4 Depth=1
\ts_cbranch_scc1 .LBB0_4
; %bb.7:
\ts_endpgm
.Lfunc_end0:
\tv_mfma_f32_32x32x8_bf16 v[0:15], v[16:17], v[18:19], v[0:15]
"""


def test_loop_finder_on_fixture():
    import amd_peer_report as A

    loops = A.innermost_loops(FIXTURE)
    assert loops == {
        "0_2": ["v_mfma_f32_32x32x8_bf16", "v_exp_f32_e32", "v_mfma_f32_16x16x16_bf16", "s_cbranch_scc1"],
        "0_5": ["v_exp_f32_e32", "v_mfma_f32_16x16x16_bf16", "s_cbranch_scc1"],
    }
    key = A.key_loops(FIXTURE)
    assert [(k["header"], k["mfma"], k["exp"], k["mfma_flops"]) for k in key] == [
        ("0_2", 2, 1, 2 * 32 * 32 * 8 + 2 * 16 * 16 * 16),
        ("0_5", 1, 1, 2 * 16 * 16 * 16),
    ]
    assert A.main_loop(key)["header"] == "0_2"
    with pytest.raises(ValueError):
        A.main_loop([])
    with pytest.raises(ValueError):
        A.mfma_flops("v_exp_f32_e32")


@pytest.mark.parametrize(
    ("vgprs", "waves"), [(1, 8), (64, 8), (65, 7), (115, 4), (128, 4), (221, 2), (256, 2), (512, 1)]
)
def test_occupancy(vgprs, waves):
    import amd_peer_report as A

    assert A.occupancy(vgprs) == waves


def test_our_forward_on_gfx942(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, os.path.join(BENCH, "amd_peer_report.py"), "--ours-only", "--kernels", "fwd"]
    r = subprocess.run([*cmd, "--head-dims", "64", "-", str(tmp_path)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        (row,) = json.load(f)["rows"]
    assert (row["kernel"], row["impl"], row["head_dim"]) == ("fwd", "ours", 64)
    assert row["vgpr_spills"] == row["sgpr_spills"] == 0, row
    assert row["loop"]["mfma"] > 0 and row["mfma_total"] >= row["loop"]["mfma"]
    assert 0 < row["useful_mfma_fraction"] <= 1.0, row
