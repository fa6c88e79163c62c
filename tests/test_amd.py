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
