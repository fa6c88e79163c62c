"""`siglip2 export-kernel DIR`: our attention as a Hugging Face kernel-hub build that transformers loads by name.

The directory is the kernel-builder layout that the `kernels` package (>= 0.19) loads for pure-Python/Triton code:

    DIR/build/torch-<backend>/metadata.json
    DIR/build/torch-<backend>/siglip2_attention/__init__.py    the flash-attn / attention-interface entry points
    DIR/build/torch-<backend>/siglip2_attention/<kernels>.py   our kernels/ modules, copied byte for byte

`torch-<backend>` is a "noarch" variant (torch-cuda, torch-rocm, torch-xpu, torch-cpu): `kernels` prefers a noarch
variant for the running backend over the older `torch-universal` name, and rejects a noarch variant of another
backend, so one copy per backend Triton (or, on CPU, the interpreter / PyTorch reference) runs on is written.

The exported code is a verbatim copy of the package's own kernels, not a fork and not an import of `siglip2`: the
directory then loads wherever `kernels` and `triton` are installed, without siglip2 (the point of a hub kernel).
Where siglip2 is importable too, the module binds to siglip2.kernels instead of importing its copy (the same bytes,
checked): the copy's torch.library ops carry siglip2's names (siglip2::attention_fwd), and two registrations of one
name in a process collide.
Drift is caught instead: metadata.json records the siglip2 version, the export format and the sha256 of the copied
sources, and the exported module refuses to import when (1) metadata.json and the code disagree, (2) the export
format is not the one it was written for, (3) the copied files were edited, or (4) siglip2 is importable in the
same interpreter and its kernels differ from the copy (an export older than the installed package).

In transformers (>= 5.25): `LOCAL_KERNELS="siglip2/attention=DIR"` then
`Model.from_pretrained(..., attn_implementation="siglip2/attention")` (or `kernels.get_local_kernel(DIR)`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile

KERNEL_NAME = "siglip2-attention"  # kernels' name rule: lowercase letters, digits, dashes
PYTHON_NAME = KERNEL_NAME.replace("-", "_")
EXPORT_FORMAT = 1
KERNELS_MINVER = "0.19.0"
VARIANTS = ("torch-cuda", "torch-rocm", "torch-xpu", "torch-cpu")
# kernels/ modules the attention ops need (attention.py's imports, transitively); copied byte for byte
SOURCES = ("_configs.py", "_utils.py", "attention.py", "attention_triton.py", "reference.py")


def kernel_sources() -> dict[str, bytes]:
    """The bytes of SOURCES as the installed siglip2.kernels holds them."""
    import siglip2.kernels as k

    out = {}
    for name in SOURCES:
        for folder in k.__path__:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    out[name] = f.read()
                break
        else:
            raise FileNotFoundError(f"siglip2.kernels has no {name} (searched {list(k.__path__)})")
    return out


def sources_sha256(sources: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + hashlib.sha256(sources[name]).digest())
    return h.hexdigest()


def _metadata(record: dict, backend: str) -> dict:
    return {
        "name": KERNEL_NAME,
        "id": f"_{PYTHON_NAME}_{record['source-sha256'][:16]}",
        "version": EXPORT_FORMAT,
        "license": "Apache-2.0",
        "kernels-minver": KERNELS_MINVER,
        "python-depends": [],
        "backend": {"type": backend},
        "siglip2": record,
    }


def export_kernel(directory: str, *, overwrite: bool = False) -> str:
    """Write the kernel-hub build to `directory` (refused if it exists and is not empty, unless overwrite: then its
    build/ is replaced). Returns the directory."""
    # the version of the package this module belongs to: siglip2/__init__ ran before any submodule could, so it is
    # read from sys.modules rather than imported (integrations sit below the top-level package in the import graph)
    version = sys.modules["siglip2"].__version__
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"export-kernel: {directory!r} exists and is not a directory")
    if os.path.isdir(directory) and os.listdir(directory) and not overwrite:
        raise ValueError(f"export-kernel: {directory!r} is not empty; pass --overwrite to replace its build/")
    sources = kernel_sources()
    record = {"format": EXPORT_FORMAT, "siglip2-version": version, "source-sha256": sources_sha256(sources)}
    init = INIT_TEMPLATE.replace("@RECORD@", json.dumps(record, sort_keys=True))
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".build-", dir=directory)  # written whole, then swapped in
    try:
        for variant in VARIANTS:
            pkg = os.path.join(tmp, variant, PYTHON_NAME)
            os.makedirs(pkg)
            with open(os.path.join(tmp, variant, "metadata.json"), "w") as f:
                json.dump(_metadata(record, variant.split("-", 1)[1]), f, indent=2, sort_keys=True)
                f.write("\n")
            with open(os.path.join(pkg, "__init__.py"), "w") as f:
                f.write(init)
            for name, data in sources.items():
                with open(os.path.join(pkg, name), "wb") as f:
                    f.write(data)
        build = os.path.join(directory, "build")
        if os.path.isdir(build):
            shutil.rmtree(build)
        os.replace(tmp, build)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return directory


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR", help="output directory (kernel-builder layout: DIR/build/torch-*/)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR/build if DIR is not empty")


def run(args: argparse.Namespace) -> int:
    directory = export_kernel(args.directory, overwrite=args.overwrite)
    print(f"wrote {directory}/build/{{{','.join(VARIANTS)}}} ({KERNEL_NAME}, format {EXPORT_FORMAT})")
    print(
        f'use it offline: LOCAL_KERNELS="siglip2/attention={os.path.abspath(directory)}" and '
        f'attn_implementation="siglip2/attention" (or kernels.get_local_kernel(DIR))'
    )
    return 0


# The exported package's __init__.py. @RECORD@ is replaced by the export record (JSON, a valid Python literal).
INIT_TEMPLATE = '''\
"""siglip2-triton's attention kernels as a Hugging Face kernel-hub build (written by `siglip2 export-kernel`).

flash_attn_varlen_func / flash_attn_func: flash-attn's signatures, as transformers' flash wrapper calls them, on
siglip2's varlen attention (non-causal; no dropout, window, softcap or alibi: those are refused).
siglip2_attention: transformers' attention-interface signature, on siglip2's padded attention (key-padding masks).
The sibling modules are siglip2's kernels/ copied byte for byte; this file only adapts signatures.
"""

import hashlib as _hashlib
import json as _json
import os as _os

import torch as _torch

_EXPORT = @RECORD@
_HERE = _os.path.dirname(_os.path.abspath(__file__))
_REEXPORT = "re-export it with `siglip2 export-kernel DIR --overwrite`"


def _sha256(read):
    h = _hashlib.sha256()
    for name in sorted(read):
        h.update(name.encode() + b"\\0" + _hashlib.sha256(read[name]).digest())
    return h.hexdigest()


def _read(folder, names):
    out = {}
    for name in names:
        with open(_os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def _check_export():
    with open(_os.path.join(_os.path.dirname(_HERE), "metadata.json")) as f:
        recorded = _json.load(f).get("siglip2")
    if recorded != _EXPORT:
        raise ImportError(
            f"siglip2 kernel export at {_HERE}: metadata.json records {recorded!r} but this code was exported as "
            f"{_EXPORT!r} (a directory mixed from two exports); {_REEXPORT}"
        )
    if _EXPORT["format"] != 1:
        raise ImportError(f"siglip2 kernel export at {_HERE}: export format {_EXPORT['format']} is not 1; {_REEXPORT}")
    names = [n for n in sorted(_os.listdir(_HERE)) if n.endswith(".py") and n != "__init__.py"]
    if _sha256(_read(_HERE, names)) != _EXPORT["source-sha256"]:
        raise ImportError(f"siglip2 kernel export at {_HERE}: its kernel files were edited after export; {_REEXPORT}")
    try:  # optional: with siglip2 installed here too, the copy must be the installed package's kernels
        import siglip2.kernels as package
        from siglip2 import __version__ as installed
        from siglip2.integrations.kernel_hub import kernel_sources, sources_sha256
    except ImportError:
        return None
    if sources_sha256(kernel_sources()) != _EXPORT["source-sha256"]:
        raise ImportError(
            f"siglip2 kernel export at {_HERE} is out of date: exported from siglip2 {_EXPORT['siglip2-version']} "
            f"(kernels sha256 {_EXPORT['source-sha256'][:12]}), but the installed siglip2 {installed} has different "
            f"kernels; {_REEXPORT}"
        )
    return package


# The copy registers torch.library ops under siglip2's names (siglip2::attention_fwd, ...): two copies in one process
# would collide. So where siglip2 itself is importable (and, checked above, its kernels are this copy byte for byte)
# the entry points below run on siglip2.kernels; elsewhere, on the copy.
_package = _check_export()
if _package is not None:
    padded_attention, varlen_attention = _package.padded_attention, _package.varlen_attention
else:
    from .attention import padded_attention, varlen_attention

__version__ = _EXPORT["siglip2-version"]


def _refuse(op, dropout_p, causal, window_size, softcap, alibi_slopes, return_attn_probs, block_table):
    bad = []
    if causal:
        bad.append("causal=True (siglip2's attention is bidirectional)")
    if dropout_p:
        bad.append(f"dropout_p={dropout_p} (no attention dropout)")
    if window_size is not None and tuple(window_size) != (-1, -1):
        bad.append(f"window_size={tuple(window_size)} (no sliding window)")
    if softcap:
        bad.append(f"softcap={softcap} (no logit softcapping)")
    if alibi_slopes is not None:
        bad.append("alibi_slopes (no ALiBi)")
    if return_attn_probs:
        bad.append("return_attn_probs=True (probabilities are never materialized)")
    if block_table is not None:
        bad.append("block_table (no paged KV cache)")
    if bad:
        raise NotImplementedError(f"siglip2-attention {op}: not supported: " + "; ".join(bad))


def _int(x):
    return int(x.item()) if isinstance(x, _torch.Tensor) else int(x)


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """flash-attn's varlen signature: q (total_q, H, D), k, v (total_k, H, D), int32 cu_seqlens -> (total_q, H, D).
    `deterministic` is accepted and ignored: the kernels take no atomics, every call is deterministic."""
    _refuse("flash_attn_varlen_func", dropout_p, causal, window_size, softcap, alibi_slopes, return_attn_probs,
            block_table)
    return varlen_attention(
        q, k, v, cu_seqlens_q.to(_torch.int32), cu_seqlens_k.to(_torch.int32), _int(max_seqlen_q),
        _int(max_seqlen_k), softmax_scale,
    )


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """flash-attn's dense signature: q (B, Sq, H, D), k, v (B, Sk, H, D) -> (B, Sq, H, D), as one varlen call."""
    _refuse("flash_attn_func", dropout_p, causal, window_size, softcap, alibi_slopes, return_attn_probs, None)
    b, sq, h, d = q.shape
    sk = k.shape[1]
    steps = _torch.arange(b + 1, device=q.device, dtype=_torch.int32)
    out = varlen_attention(
        q.reshape(b * sq, h, d), k.reshape(b * sk, h, k.shape[-1]), v.reshape(b * sk, h, v.shape[-1]),
        steps * sq, steps * sk, sq, sk, softmax_scale,
    )
    return out.view(b, sq, h, out.shape[-1])


def _key_padding_mask(mask, batch, q_len, k_len):
    """transformers' attention mask (None, (B, Lk), or 4-D bool/additive that is the same for every query) ->
    bool (B, Lk) key mask or None; anything else (causal, per-query, bias) is refused."""
    if mask is None:
        return None
    if mask.ndim == 2 and tuple(mask.shape) == (batch, k_len):
        return mask if mask.dtype == _torch.bool else mask != 0
    if mask.ndim != 4 or mask.shape[-1] != k_len or mask.shape[0] not in (1, batch) or mask.shape[2] not in (1, q_len):
        raise NotImplementedError(f"siglip2_attention: not supported: an attention mask of shape {tuple(mask.shape)}")
    if mask.dtype == _torch.bool:
        keep = mask
    else:
        masked = mask <= _torch.finfo(mask.dtype).min / 2
        if not bool(((mask == 0) | masked).all()):
            raise NotImplementedError("siglip2_attention: not supported: an additive attention mask with bias values")
        keep = ~masked
    row = keep[:, :1, :1, :]
    if not _torch.equal(keep, row.expand_as(keep)):
        raise NotImplementedError("siglip2_attention: not supported: a per-query attention mask (causal or custom)")
    return row[:, 0, 0, :].expand(batch, k_len)


def siglip2_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, is_causal=None,
                      **kwargs):
    """transformers' attention-interface signature: q, k, v (B, H, L, D) -> ((B, Lq, H, D), None). Register it with
    an sdpa-style mask function (transformers.masking_utils.sdpa_mask), which gives key-padding masks."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    _refuse("siglip2_attention", dropout, causal and query.shape[2] > 1,
            None, kwargs.get("softcap"), None, False, None)
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError("siglip2_attention: not supported: sliding_window (no sliding window)")
    if query.shape[1] != key.shape[1]:
        raise NotImplementedError("siglip2_attention: not supported: fewer key/value heads than query heads")
    key_mask = _key_padding_mask(attention_mask, query.shape[0], query.shape[2], key.shape[2])
    return padded_attention(query, key, value, key_mask, scaling).transpose(1, 2), None


__all__ = ["flash_attn_func", "flash_attn_varlen_func", "siglip2_attention", "varlen_attention", "padded_attention"]
'''
