"""GPU architecture families for the launch-config tables, their shared-memory limits, and the per-device lookup.

Every launcher keeps one readable table per kernel, of one shape for all ops: family -> key -> tuple. The family
names are below (`FAMILIES`); the key starts with the dtype class (`dtype_class`); the tuple holds the block sizes,
num_warps and num_stages in the order the launcher's comment states. A launch looks up its tensor's device once
(`device_family`, cached per device index) and indexes the table. Anything not listed
(a future architecture, or an older one) gets the "default" entry: configs that compile with no register spills
on every architecture in `AOT_CCS` and fit the smallest shared memory among them (99 KB).
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
FAMILIES = ("sm80", "sm86", "sm90", "sm100", "sm120", "default")

# Opt-in dynamic shared memory per thread block, bytes (CUDA C programming guide, compute capabilities table).
SMEM_LIMIT = {
    "sm80": 163 * 1024,
    "sm86": 99 * 1024,
    "sm90": 227 * 1024,
    "sm100": 227 * 1024,
    "sm120": 99 * 1024,
    "default": 99 * 1024,
}

# The architectures the ahead-of-time compile test builds every table for (tests/test_aot.py).
AOT_CCS = (80, 86, 89, 90, 100, 120)

# The CPU interpreter (TRITON_INTERPRET=1) has no architecture; it runs the sm_80 table, the configs tuned first.
INTERPRETER_FAMILY = "sm80"


def dtype_class(dtype: torch.dtype) -> str:
    """The dtype part of every table key: "fp32" (IEEE FMA dots, smaller tiles) or "16bit" (bf16/fp16 on tensor
    cores: the two compile alike but for the element type, so they share entries)."""
    return "fp32" if dtype == torch.float32 else "16bit"


def family(cc: int) -> str:
    """The family of compute capability `cc` (e.g. 86), "default" for any architecture not in the tables."""
    return FAMILY_OF_CC.get(cc, "default")


def smem_limit(cc: int) -> int:
    return SMEM_LIMIT[family(cc)]


_DEVICE_FAMILY: dict[int, str] = {}


def device_family(device: torch.device) -> str:
    """The family of `device` (a CUDA device: its compute capability, read once per device index)."""
    if device.type != "cuda":
        return INTERPRETER_FAMILY
    index = device.index if device.index is not None else torch.cuda.current_device()
    fam = _DEVICE_FAMILY.get(index)
    if fam is None:
        major, minor = torch.cuda.get_device_capability(index)
        fam = _DEVICE_FAMILY[index] = family(10 * major + minor)
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
