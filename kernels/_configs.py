"""GPU architecture families for the launch-config tables, their shared-memory limits, and the per-device lookup.

Every launcher keeps one readable table per kernel, of one shape for all ops: family -> key -> tuple. The family
names are below (`FAMILIES`); the key starts with the dtype class (`dtype_class`); the tuple holds the block sizes,
num_warps and num_stages in the order the launcher's comment states. A launch looks up its tensor's device once
(`device_family`, cached per device index) and indexes the table. Anything not listed
(a future architecture, or an older one) gets the "default" entry: configs that compile with no register spills
on every architecture in `AOT_CCS` and fit the smallest shared memory among them (99 KB); an unlisted AMD one
(ROCm PyTorch) gets "amd", its AMD counterpart (64 KB LDS).
"""

from __future__ import annotations

import torch

# compute capability (10 * major + minor) -> family. sm_87 (Jetson Orin) has 163 KB, but the 99 KB consumer
# configs are a safe fit there; sm_120/121 (RTX 50xx, RTX PRO 6000, DGX Spark) have consumer parts' 99 KB.
FAMILY_OF_CC = {
    80: "sm80",  # Ampere datacenter: A100, A30
    86: "sm86",
    87: "sm86",
    89: "sm86",  # Ampere / Ada consumer and workstation: A10, A40, RTX 3090/4090, L4, L40
    90: "sm90",  # Hopper: H100, H200, GH200
    100: "sm100",
    103: "sm100",  # Blackwell datacenter: B200, GB200, B300
    120: "sm120",
    121: "sm120",  # Blackwell consumer / workstation: RTX 5090, RTX PRO 6000
}
# AMD: the gfx architecture name (ROCm's gcnArchName without its ":feature" suffixes) -> family. CDNA3 and CDNA4
# run wave 64 with MFMA dots; RDNA3/RDNA4 wave 32 with WMMA. Any other gfx name gets "amd": configs that compile
# spill-free on every AMD target in `AOT_ARCHS` and fit the smallest LDS among them (64 KB).
FAMILY_OF_ARCH = {
    "gfx90a": "gfx90a",  # CDNA2: MI210, MI250, MI250X
    "gfx942": "gfx942",  # CDNA3: MI300X, MI300A, MI325X
    "gfx950": "gfx950",  # CDNA4: MI350X, MI355X
    "gfx1100": "rdna",
    "gfx1101": "rdna",
    "gfx1102": "rdna",  # RDNA3: RX 7900, Radeon PRO W7900
    "gfx1103": "rdna",  # RDNA3 APU: Radeon 780M
    "gfx1150": "rdna",
    "gfx1151": "rdna",
    "gfx1152": "rdna",  # RDNA3.5 APUs (Strix Point, Strix Halo, Krackan): RDNA3's WMMA; the "amd" default's
    # D 96 forward (4 warps) spills 36 VGPRs on RDNA3 (bench/results/aot/amd.json), RDNA's own entry does not
    "gfx1200": "rdna",
    "gfx1201": "rdna",  # RDNA4: RX 9070, Radeon AI PRO R9700
}
AMD_FAMILIES = ("gfx90a", "gfx942", "gfx950", "rdna", "amd")
FAMILIES = ("sm80", "sm86", "sm90", "sm100", "sm120", "default", *AMD_FAMILIES)

# Opt-in dynamic shared memory per thread block, bytes (CUDA C programming guide, compute capabilities table).
SMEM_LIMIT = {
    "sm80": 163 * 1024,
    "sm86": 99 * 1024,
    "sm90": 227 * 1024,
    "sm100": 227 * 1024,
    "sm120": 99 * 1024,
    "default": 99 * 1024,
    # LDS per workgroup: 64 KB on CDNA2/CDNA3 and RDNA (one workgroup's share of an RDNA WGP), 160 KB on CDNA4
    "gfx90a": 64 * 1024,
    "gfx942": 64 * 1024,
    "gfx950": 160 * 1024,
    "rdna": 64 * 1024,
    "amd": 64 * 1024,
}
# Wavefront size per AMD family (Triton's num_warps counts wavefronts): the AOT target's warp size.
WAVE_SIZE = {"gfx90a": 64, "gfx942": 64, "gfx950": 64, "rdna": 32, "amd": 64}

# HIP launch options a table entry may carry (Triton's AMD backend, triton/backends/amd/compiler.py HIPOptions):
# fields of that name with the same meaning under triton 3.6, 3.8 and 3.9. An AMD entry's tuple ends in a dict of
# them (`split_entry`); the launchers pass them through `launch_kwargs`, which drops them on every non-AMD family
# (CUDA's launcher rejects them: "Keyword argument waves_per_eu was specified but unrecognised"), and the AOT cases
# (kernels/aot_cases.py) compile with exactly that dict (one source: the table).
# - waves_per_eu: the amdgpu-waves-per-eu hint: a scheduling target of that many waves per SIMD, which caps a
#   wave's VGPRs at 512 / waves_per_eu on CDNA (0: no hint).
# - matrix_instr_nonkdim: the MFMA M/N size (16 or 32; 0: Triton's choice per dot, which mixes 16x16 and 32x32
#   within one kernel).
# - kpack is not used: on gfx950 Triton deprecates it (a warning, then reset to 1) and marks it for removal (a
#   launch passing a removed option fails), and on gfx942 kpack=2 fixes nothing: every SigLIP2 kernel is spill-free
#   and within waves_per_eu=2's 256 VGPRs without it (it saves 0-24 VGPRs: dQ at D 72 128 -> 104; triton 3.9).
HIP_OPTION_NAMES = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")


def split_entry(entry: tuple, n: int) -> tuple[tuple, dict]:
    """A launch-config table entry as (its first `n` numbers, its HIP options): an AMD entry may end in a dict of
    `HIP_OPTION_NAMES` after its n numbers; any other entry has none ({})."""
    if len(entry) == n:
        return tuple(entry), {}
    if len(entry) != n + 1 or not isinstance(entry[n], dict):
        raise ValueError(f"launch config {entry!r}: expected {n} numbers, optionally followed by a dict of HIP options")
    unknown = set(entry[n]) - set(HIP_OPTION_NAMES)
    if unknown:
        raise ValueError(f"launch config {entry!r}: unknown HIP options {sorted(unknown)}")
    return tuple(entry[:n]), dict(entry[n])


def launch_kwargs(fam: str, num_warps: int, num_stages: int, hip: dict | None = None) -> dict:
    """The launch options of one kernel launch on device family `fam`: num_warps, num_stages and, on an AMD family
    only, the entry's HIP options `hip` (never on CUDA, whose launcher rejects them). The AOT cases build theirs
    with this same function (kernels/aot_cases.py), so a case compiles what the launcher launches."""
    kw = dict(num_warps=num_warps, num_stages=num_stages)
    if fam in AMD_FAMILIES and hip:
        kw.update(hip)
    return kw


# The architectures the ahead-of-time compile test builds every table for (tests/test_aot.py).
AOT_CCS = (80, 86, 89, 90, 100, 120)
# The AMD architectures: gfx942 and gfx950 are checked like the NVIDIA ones (tests/test_aot.py); the others
# compile their forward kernels with spills printed (`python -m siglip2.kernels.aot --ccs gfx90a,gfx1100`).
AOT_ARCHS = ("gfx942", "gfx950")
AOT_ARCHS_OTHER = ("gfx90a", "gfx1100", "gfx1201")

# The CPU interpreter (TRITON_INTERPRET=1) has no architecture; it runs the sm_80 table, the configs tuned first.
INTERPRETER_FAMILY = "sm80"


def dtype_class(dtype: torch.dtype) -> str:
    """The dtype part of every table key: "fp32" (IEEE FMA dots, smaller tiles) or "16bit" (bf16/fp16 on tensor
    cores: the two compile alike but for the element type, so they share entries)."""
    return "fp32" if dtype == torch.float32 else "16bit"


def is_amd(arch) -> bool:
    """True for an AMD architecture name ("gfx942", or ROCm's "gfx942:sramecc+:xnack-"), False for a CUDA cc."""
    return isinstance(arch, str) and arch.startswith("gfx")


def amd_arch(gcn_arch_name: str) -> str:
    """The bare architecture of a ROCm name: "gfx942:sramecc+:xnack-" -> "gfx942" (ROCm appends target features
    to the architecture name)."""
    return gcn_arch_name.split(":", 1)[0].strip().lower()


def family(cc) -> str:
    """The family of compute capability `cc` (e.g. 86) or of AMD architecture name `cc` (e.g. "gfx942", features
    allowed): "default" for any CUDA architecture not in the tables, "amd" for any such AMD one."""
    if isinstance(cc, str):
        if not is_amd(amd_arch(cc)):
            raise ValueError(f"family: expected a CUDA compute capability (int) or an AMD 'gfx...' name, got {cc!r}")
        return FAMILY_OF_ARCH.get(amd_arch(cc), "amd")
    if isinstance(cc, bool) or not isinstance(cc, int):
        raise TypeError(f"family: expected a CUDA compute capability (int) or an AMD 'gfx...' name, got {cc!r}")
    return FAMILY_OF_CC.get(cc, "default")


def smem_limit(cc) -> int:
    return SMEM_LIMIT[family(cc)]


_DEVICE_FAMILY: dict[int, str] = {}


def device_family(device: torch.device) -> str:
    """The family of `device` (a CUDA device: its compute capability, read once per device index). Under ROCm
    PyTorch (`torch.version.hip` set) "cuda" devices are AMD GPUs: the family comes from the architecture name
    (`gcnArchName`), never from the compute capability ROCm reports (gfx942 says 9.4, which is no CUDA sm_94)."""
    if device.type != "cuda":
        return INTERPRETER_FAMILY
    index = device.index if device.index is not None else torch.cuda.current_device()
    fam = _DEVICE_FAMILY.get(index)
    if fam is None:
        if getattr(torch.version, "hip", None):
            name = getattr(torch.cuda.get_device_properties(index), "gcnArchName", "") or ""
            # an empty or odd name (old ROCm builds) still gets the AMD-safe table, never an NVIDIA one
            fam = family(name) if is_amd(amd_arch(name)) else "amd"
        else:
            major, minor = torch.cuda.get_device_capability(index)
            fam = family(10 * major + minor)
        _DEVICE_FAMILY[index] = fam
    return fam


def check_tables(op: str, tables: dict) -> None:
    """Every family has a table and every table has the same keys (import-time guard against a missing entry)."""
    missing = [f for f in FAMILIES if f not in tables]
    if missing:
        raise KeyError(f"{op}: no launch-config table for {missing}")
    keys = set(tables["default"])
    for f, t in tables.items():
        if set(t) != keys:
            raise KeyError(f"{op}: table {f!r} keys differ from 'default': {sorted(set(t) ^ keys, key=str)}")
