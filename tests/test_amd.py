"""AMD (ROCm) support without an AMD GPU: the family a ROCm device gets, the dot precisions AMD's Triton backend
accepts, and the parsing of the amdgcn resources the AOT test checks (tests/test_aot.py compiles the kernels).

Under ROCm PyTorch `torch.version.hip` is set and "cuda" devices are AMD GPUs whose architecture is
`get_device_properties(i).gcnArchName` ("gfx942:sramecc+:xnack-"); the compute capability ROCm reports (9.4 on
gfx942) must never pick an NVIDIA table. These tests stub such a device.
"""

from types import SimpleNamespace

import pytest
import torch

# private: kernels/_configs.py holds the families and the per-device lookup these tests stub a device for
from siglip2.kernels import _configs

ARCH_FAMILY = {
    "gfx942:sramecc+:xnack-": "gfx942",
    "gfx942": "gfx942",
    "gfx950:sramecc+:xnack-": "gfx950",
    "gfx90a:sramecc+:xnack-": "gfx90a",
    "gfx1100": "rdna",
    "gfx1201": "rdna",
    "gfx1151": "rdna",  # RDNA3.5 (Strix Halo)
    "gfx1030": "amd",  # RDNA2: no WMMA, unknown to the tables -> the AMD-safe default
    "gfx908:sramecc+:xnack-": "amd",  # MI100
    "gfx1250": "amd",  # a future one
    "": "amd",  # an old ROCm build without the name: still an AMD table, never an NVIDIA one
}


@pytest.fixture
def rocm_device(monkeypatch):
    """Make device cuda:0 look like a ROCm GPU with architecture name `name` (call the returned setter)."""

    def use(name):
        monkeypatch.setattr(torch.version, "hip", "6.4.0", raising=False)
        monkeypatch.setattr(_configs, "_DEVICE_FAMILY", {})
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(gcnArchName=name))

        def no_cc(i):  # ROCm reports e.g. (9, 4) for gfx942: reading it on a HIP device is the bug
            raise AssertionError("the compute capability must not be read on a HIP device")

        monkeypatch.setattr(torch.cuda, "get_device_capability", no_cc)

    return use


@pytest.mark.parametrize("name", sorted(ARCH_FAMILY))
def test_rocm_device_family(rocm_device, name):
    rocm_device(name)
    assert _configs.device_family(torch.device("cuda")) == ARCH_FAMILY[name]
    assert _configs.device_family(torch.device("cuda", 0)) == ARCH_FAMILY[name]  # cached per index


def test_cuda_device_family_unchanged(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(_configs, "_DEVICE_FAMILY", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (9, 0))
    assert _configs.device_family(torch.device("cuda", 0)) == "sm90"
    assert _configs.device_family(torch.device("cpu")) == _configs.INTERPRETER_FAMILY


def test_family_by_arch_name():
    assert _configs.family("gfx950") == "gfx950" and _configs.family("GFX942:xnack-") == "gfx942"
    assert _configs.smem_limit("gfx942") == _configs.smem_limit("gfx1100") == 64 * 1024
    assert _configs.smem_limit("gfx950") == 160 * 1024 and _configs.smem_limit("gfx1030") == 64 * 1024
    assert {_configs.WAVE_SIZE[_configs.family(a)] for a in ("gfx90a", "gfx942", "gfx950")} == {64}
    assert _configs.WAVE_SIZE[_configs.family("gfx1201")] == 32
    with pytest.raises(ValueError, match=r"AMD 'gfx\.\.\.' name, got 'sm_90'"):
        _configs.family("sm_90")
    with pytest.raises(TypeError, match=r"got 9\.0"):
        _configs.family(9.0)


def test_tables_have_the_amd_families():
    pytest.importorskip("triton")
    from siglip2.kernels import attention_triton as T
    from siglip2.kernels import patch_embed_triton as P
    from siglip2.kernels import sigmoid_loss_triton as L

    for tables in (T.FWD_CONFIGS, T.BWD_CONFIGS, P.FWD_CONFIGS, P.ADJ_CONFIGS, L.CONFIGS):
        for fam in _configs.AMD_FAMILIES:
            assert set(tables[fam]) == set(tables["default"])


def test_dot_precisions_compile_on_amd():
    """Triton's AMD backend allows "tf32" on gfx942 only: elsewhere a "tf32" dot is a CompilationError (what broke
    every attention kernel on gfx950). NVIDIA keeps TF32 for the fp32 position dots."""
    pytest.importorskip("triton")
    from siglip2.kernels import patch_embed_triton as P

    # private: the one dot-precision rule the three kernels share
    from siglip2.kernels._utils import dot_precision

    amd_ok = {"ieee", "bf16x3", "bf16x6"}
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        assert dot_precision(dt) == "ieee"
        for fam in _configs.AMD_FAMILIES:
            assert P.pos_precision(dt, fam) in amd_ok and P.adjoint_precision(dt, fam) in amd_ok
    assert P.pos_precision(torch.float16, "sm90") == "tf32x3" and P.pos_precision(torch.bfloat16, "sm90") == "tf32"
    assert P.adjoint_precision(torch.bfloat16, "sm80") == "tf32" and P.adjoint_precision(torch.float32) == "ieee"


AMDGCN = """
_k:
    v_mfma_f32_32x32x8_bf16 a[0:15], v[2:3], v[4:5], a[0:15]
    v_mfma_f32_32x32x8_bf16 a[0:15], v[6:7], v[8:9], a[0:15]
    s_endpgm
amdhsa.kernels:
  - .group_segment_fixed_size: 49152
    .sgpr_count:     100
    .sgpr_spill_count: 6
    .vgpr_count:     161
    .vgpr_spill_count: 0
"""


def test_amdgcn_resource_usage():
    from siglip2.kernels.aot_compile import amdgcn_resource_usage, is_offender

    u = amdgcn_resource_usage(AMDGCN)
    assert u == {"regs": 161, "sgprs": 100, "stack": 0, "local": 6, "shared": 49152, "mfma": 2}
    assert is_offender(dict(u, cc="gfx942", fma_dots=0))  # an SGPR spill fails
    assert not is_offender(dict(u, local=0, cc="gfx942", fma_dots=0))
    assert is_offender(dict(u, local=0, cc="gfx942", fma_dots=1))  # a dot left off the matrix cores fails
    assert is_offender(dict(u, local=0, shared=65 * 1024, cc="gfx942", fma_dots=0))  # over 64 KB LDS
    assert not is_offender(dict(u, local=0, shared=65 * 1024, cc="gfx950", fma_dots=0))
    with pytest.raises(ValueError, match=r"no \.vgpr_count"):
        amdgcn_resource_usage("s_endpgm")


def test_ttgir_dots():
    from siglip2.kernels.aot_compile import ttgir_dots

    ttgir = (
        "#blocked = #ttg.blocked<{}>\n#mma = #ttg.amd_mfma<{version = 3}>\n"
        "%1 = tt.dot %a, %b, %c : tensor<64x16xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma}>> "
        "-> tensor<64x64xf32, #mma>\n"
        "%2 = tt.dot %a, %b, %c : tensor<64x16xf32, #ttg.dot_op<{opIdx = 0, parent = #blocked}>> "
        "-> tensor<64x64xf32, #blocked>\n"
    )
    assert ttgir_dots(ttgir) == (2, 1)


# ---------------------------------------------------------------------------------------------- HIP launch options

HIP = set(_configs.HIP_OPTION_NAMES)


def _tables():
    from siglip2.kernels import attention_triton as T
    from siglip2.kernels import patch_embed_triton as P
    from siglip2.kernels import sigmoid_loss_triton as L

    return {"attn fwd": (T.FWD_CONFIGS, 4), "attn bwd": (T.BWD_CONFIGS, 7), "pe fwd": (P.FWD_CONFIGS, 5)} | {
        "pe adjoint": (P.ADJ_CONFIGS, 4),
        "loss": (L.CONFIGS, 5),
    }


def test_hip_options_only_in_amd_tables():
    """Every entry parses (n numbers, then optionally a dict of known HIP options); NVIDIA entries carry none, and
    `launch_kwargs` drops any on a non-AMD family (CUDA's launcher rejects them as unrecognised keywords)."""
    pytest.importorskip("triton")
    amd_with_options = set()
    for op, (tables, n) in _tables().items():
        for fam, table in tables.items():
            for key, entry in table.items():
                tile, hip = _configs.split_entry(entry, n)
                assert set(hip) <= HIP, (op, fam, key)
                if fam not in _configs.AMD_FAMILIES:
                    assert hip == {}, (op, fam, key)
                elif hip:
                    amd_with_options.add(fam)
                assert not HIP & set(_configs.launch_kwargs("sm90", tile[-2], tile[-1], hip))
    assert amd_with_options == {"gfx90a", "gfx942", "gfx950"}  # RDNA and the unknown-AMD table: Triton's defaults
    hip = {"waves_per_eu": 2, "matrix_instr_nonkdim": 16}
    assert _configs.launch_kwargs("gfx942", 8, 2, hip) == dict(num_warps=8, num_stages=2, **hip)
    for fam in ("sm80", "sm90", "sm120", "default"):
        assert _configs.launch_kwargs(fam, 8, 2, hip) == dict(num_warps=8, num_stages=2)
    with pytest.raises(ValueError, match="unknown HIP options"):
        _configs.split_entry((1, 2, {"wave_per_eu": 2}), 2)
    with pytest.raises(ValueError, match="expected 2 numbers"):
        _configs.split_entry((1, 2, 3), 2)


class _Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](**kwargs)` records the keyword arguments."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda **kw: self.calls.append(kw)


def _launch_options(kw: dict) -> tuple:
    return kw["num_warps"], kw["num_stages"], tuple(sorted((k, kw[k]) for k in HIP if k in kw))


def _case_options(c: dict) -> tuple:
    return c["num_warps"], c["num_stages"], tuple(sorted(c["amd_options"].items()))


@pytest.fixture
def launch_on(monkeypatch):
    """Record what each launcher passes to its kernels on device family `fam` (CPU tensors: nothing runs). On a
    CUDA family every table entry gets a HIP option appended, which the launch must drop."""
    pytest.importorskip("triton")
    from siglip2.kernels import attention_triton as T
    from siglip2.kernels import patch_embed_triton as P
    from siglip2.kernels import sigmoid_loss_triton as L

    def use(fam):
        rec = {}
        for mod, names in (
            (T, ("_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_preprocess_kernel")),
            (P, ("_patch_embed_fwd_kernel", "_pos_adjoint_kernel")),
            (L, ("_sigmoid_loss_fwd_kernel",)),
        ):
            monkeypatch.setattr(mod, "device_family", lambda device: fam)
            for name in names:
                rec[name] = _Recorder()
                monkeypatch.setattr(mod, name, rec[name])
        monkeypatch.setattr(P, "interpreting", lambda: False)  # the tables, not the interpreter's small tiles
        monkeypatch.setattr(L, "interpreting", lambda: False)
        if fam not in _configs.AMD_FAMILIES:  # poison the CUDA tables: a launcher must still pass no HIP option
            for tables in (T.FWD_CONFIGS, T.BWD_CONFIGS, P.FWD_CONFIGS, P.ADJ_CONFIGS, L.CONFIGS):
                monkeypatch.setitem(tables, fam, {k: (*v, {"waves_per_eu": 2}) for k, v in tables[fam].items()})
        return rec

    return use


@pytest.mark.parametrize("arch", ["gfx942", 90])
@pytest.mark.parametrize("head_dim", [64, 72, 96])
@pytest.mark.parametrize("queries", ["seq", "pool"])
def test_attention_launch_options_match_aot_case(launch_on, arch, head_dim, queries):
    """The attention launchers pass the HIP options on gfx942 and none on sm_90, and exactly the num_warps,
    num_stages, HIP options and tile the AOT case of that launch compiles (kernels/aot_cases.py)."""
    from siglip2.kernels import attention_triton as T
    from siglip2.kernels.aot_cases import attention_kernel_case

    fam = _configs.family(arch)
    rec = launch_on(fam)
    H, L = 2, (1 if queries == "pool" else 64)
    q, k, v = (torch.zeros(L, H, head_dim, dtype=torch.bfloat16) for _ in range(3))
    cu = torch.tensor([0, L], dtype=torch.int32)
    o, lse = T.attention_fwd(q, k, v, cu, cu, None, L, L, 0.125)
    T.attention_bwd(torch.zeros_like(q), q, k, v, o, lse, cu, cu, None, L, L, 0.125)
    for name, kname in (("_attn_fwd_kernel", "fwd"), ("_attn_bwd_dkdv_kernel", "dkdv"), ("_attn_bwd_dq_kernel", "dq")):
        (kw,) = rec[name].calls
        case = attention_kernel_case(kname, arch, head_dim, torch.bfloat16, "varlen", queries)
        assert case["family"] == fam
        assert _launch_options(kw) == _case_options(case), kname
        assert (kw["BLOCK_M"], kw["BLOCK_N"]) == (case["block_m"], case["block_n"])
        assert bool(case["amd_options"]) == _configs.is_amd(arch)
        if not _configs.is_amd(arch):
            assert not HIP & set(kw)


@pytest.mark.parametrize("arch", ["gfx942", 90])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_patch_embed_and_loss_launch_options_match_aot_cases(launch_on, arch, dtype):
    """The patch-embedding forward and adjoint and the loss launchers: the options a launch passes are those of
    the AOT cases with the same family and tile (all of which compile with one set of options)."""
    from siglip2.kernels import patch_embed_triton as P
    from siglip2.kernels import sigmoid_loss_triton as L
    from siglip2.kernels.aot_cases import loss_cases, patch_embed_cases

    fam = _configs.family(arch)
    rec = launch_on(fam)
    G, D, K = 16, 32, 768  # P=16: the "aligned" forward key
    shapes = torch.tensor([[2, 2]])
    P.patch_embed_fwd(
        torch.zeros(1, 4, K, dtype=dtype),
        shapes,
        torch.zeros(D, K, dtype=dtype),
        torch.zeros(D, dtype=dtype),
        torch.zeros(G * G, D, dtype=dtype),
    )
    P.pos_embed_adjoint(torch.zeros(1, 4, D, dtype=dtype), shapes, 4, G)
    t = torch.zeros(8, D, dtype=dtype)
    L.sigmoid_loss_block_fwd(t, t, torch.zeros(1), torch.zeros(1), True, 8.0, True)
    cases = patch_embed_cases((arch,)) + loss_cases((arch,))
    ty = "bf16" if dtype == torch.bfloat16 else "fp32"
    for name, op, kernel, blocks in (
        ("_patch_embed_fwd_kernel", "patch_embed", "fwd", ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
        ("_pos_adjoint_kernel", "patch_embed", "adjoint", ("BLOCK_M", "BLOCK_N")),
        ("_sigmoid_loss_fwd_kernel", "loss", "fwd", ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
    ):
        (kw,) = rec[name].calls
        match = [
            c
            for c in cases
            if (c["family"], c["op"], c["kernel"]) == (fam, op, kernel)
            and all(c["constexprs"][b] == kw[b] for b in blocks)
            and ty in next(iter(c["signature"].values()))
        ]
        assert match, (name, kw)
        assert {_case_options(c) for c in match} == {_launch_options(kw)}, name
        if not _configs.is_amd(arch):
            assert not HIP & set(kw)
        else:
            assert _launch_options(kw)[2], name  # gfx942 launches pass their HIP options
