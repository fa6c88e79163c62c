"""Image input handling shared by the processors: decoding, conversion to RGB uint8, NaFlex target sizes,
and a PIL-exact resampler in torch.

Every input (path, PIL image, numpy HWC/HW array, torch CHW/HW tensor) becomes an RGB uint8 image before
resizing, because transformers' PIL processor resizes uint8 images with PIL. `resize_uint8` reproduces
Pillow's 8-bit two-pass resampling (`Resample.c`: double-precision filter weights rounded to 22-bit fixed
point, each pass rounded and clipped to uint8, Pillow's pass order) with integer tensor ops, so the torch
path gives bit-identical pixels to `PIL.Image.resize` on any device.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch


def positive_int(name: str, value: object, upper: int | None = None, why: str = "") -> int:
    """`value` as an int >= 1 (and <= upper): never a silent default for 0, a truncated 2.5, a bool or a string."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    n = int(value)  # numbers.Integral declares no comparison operators; int() of an Integral is exact
    if n < 1 or (upper is not None and n > upper):
        bound = f"in [1, {upper}]" if upper is not None else ">= 1"
        raise ValueError(f"{name} must be an int {bound}{why}, got {value}")
    return n


PIL_FILTERS = {1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images


def get_image_size_for_max_num_patches(
    height: int, width: int, patch_size: int, max_num_patches: int, eps: float = 1e-5
) -> tuple[int, int]:
    """transformers' (and big_vision's) binary search over the scale: the largest (H', W'), both multiples of
    `patch_size` and at least one patch, with (H'/P)(W'/P) <= max_num_patches. The scale is capped at 100x."""

    def scaled(scale: float, size: int) -> int:
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:
        mid = (lo + hi) / 2
        if (scaled(mid, height) / patch_size) * (scaled(mid, width) / patch_size) <= max_num_patches:
            lo = mid
        else:
            hi = mid
    return scaled(lo, height), scaled(lo, width)


# ----------------------------------------------------------------------------------------------
# Decoding and conversion to RGB uint8
# ----------------------------------------------------------------------------------------------


def open_image(path, name: str = "image"):
    """Decode a file with PIL (its decompression-bomb limit applies), EXIF-transposed, as load_image does."""
    import PIL.Image
    import PIL.ImageOps

    path = os.fspath(path)
    try:
        img = PIL.Image.open(path)
        img = PIL.ImageOps.exif_transpose(img)
        img.load()
    except PIL.Image.DecompressionBombError as e:
        raise PIL.Image.DecompressionBombError(f"{name} ({path!r}): refused, {e}") from e
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{name}: no such file {path!r}") from e
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{name}: cannot decode {path!r} as an image ({type(e).__name__}: {e})") from e
    return img


def _check_shape(shape, name):
    if len(shape) != 3:
        raise ValueError(f"{name}: expected a 2-D (H, W) or 3-D image, got shape {tuple(shape)}")
    h, w, c = shape
    if h == 0 or w == 0:
        raise ValueError(f"{name}: zero-size image (height {h}, width {w})")
    if c > 4 or c == 0:
        raise ValueError(f"{name}: expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels, got {c}")


def _to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    """Any numeric HWC array -> uint8: uint16 (and integers above 255) as 16-bit, floats in [0, 1]."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: image contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1:
            return np.round(a.astype(np.float64) * 255).astype(np.uint8)
        if lo >= 0 and hi <= 255 and np.array_equal(a, np.round(a)):
            return a.astype(np.uint8)  # integral floats in [0, 255], as transformers reads them
        raise ValueError(
            f"{name}: float image values must lie in [0, 1] (or be integers in [0, 255]), got [{lo:g}, {hi:g}]"
        )
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"{name}: integer image values must lie in [0, 65535], got [{lo}, {hi}]")
        if a.dtype == np.uint16 or hi > 255:
            # 16-bit: v * 255 / 65535 rounded, i.e. round(v / 257), exact for v = 257 * u8
            return ((a.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
        return a.astype(np.uint8)
    raise TypeError(f"{name}: unsupported array dtype {a.dtype}")


def _composite_white(a: np.ndarray) -> np.ndarray:
    """RGBA/LA uint8 -> RGB on a white background, with transformers' numpy formula (float64, round)."""
    alpha = a[..., -1:] / 255
    color = a[..., :-1]
    if color.shape[-1] == 1:
        color = np.repeat(color, 3, axis=-1)
    return np.round(alpha * color + (1 - alpha) * 255).astype(np.uint8)


def array_to_rgb(a: np.ndarray, name: str = "image") -> np.ndarray:
    """A numpy HWC (or HW) array of any supported dtype -> contiguous RGB uint8 HWC."""
    if a.ndim == 2:
        a = a[..., None]
    _check_shape(a.shape, name)
    a = _to_uint8(a, name)
    c = a.shape[-1]
    if c == 1:
        a = np.repeat(a, 3, axis=-1)
    elif c in (2, 4):
        a = _composite_white(a)
    return np.ascontiguousarray(a)


def pil_to_rgb(img, name: str = "image"):
    """A PIL image of any mode -> RGB PIL image (transparency composited onto white, as transformers'
    `convert_to_rgb`; 16-bit modes scaled to 8 bits instead of clipped; float mode "F" rounded from its 0-255
    scale, or read as [0, 1] intensities when no value exceeds 1)."""
    import PIL.Image

    if img.width == 0 or img.height == 0:
        raise ValueError(f"{name}: zero-size image ({img.width}x{img.height})")
    if img.mode == "RGB":
        return img
    if img.mode.startswith(("I", "F")):
        a = np.asarray(img)
        if (
            img.mode == "F"
            and np.isfinite(a).all()
            and a.max(initial=0) > 1
            and a.min(initial=0) >= 0
            and a.max(initial=0) <= 255
        ):
            a = np.round(a)  # PIL's float mode is on the 0-255 scale; values <= 1 are read as [0, 1] intensities
        return PIL.Image.fromarray(array_to_rgb(a, name))
    has_alpha = "A" in img.getbands() or img.info.get("transparency") is not None
    try:
        if has_alpha:
            rgba = img.convert("RGBA")
            white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return PIL.Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")
    except ValueError as e:
        raise ValueError(f"{name}: cannot convert PIL mode {img.mode!r} to RGB ({e})") from e


def to_rgb_uint8(image, name: str = "image"):
    """Any supported input -> (RGB PIL image | RGB uint8 HWC numpy array | RGB uint8 CHW torch tensor).

    Torch tensors stay on their device (CHW or HW); everything else goes through numpy/PIL on the CPU.
    """
    import PIL.Image

    if isinstance(image, (str, os.PathLike)):
        image = open_image(image, name)
    if isinstance(image, PIL.Image.Image):
        return pil_to_rgb(image, name)
    if isinstance(image, torch.Tensor):
        return tensor_to_rgb(image, name)
    if isinstance(image, np.ndarray):
        return array_to_rgb(image, name)
    raise TypeError(
        f"{name}: expected a path, PIL image, numpy array (H, W[, C]) or torch tensor ([C, ]H, W), "
        f"got {type(image).__name__}"
    )


def tensor_to_rgb(t: torch.Tensor, name: str = "image") -> torch.Tensor:
    """A torch CHW (or HW) tensor -> RGB uint8 CHW on the same device, with `array_to_rgb`'s rules."""
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(f"{name}: expected a torch tensor of shape (C, H, W) or (H, W), got {tuple(t.shape)}")
    _check_shape((t.shape[1], t.shape[2], t.shape[0]), name)
    if t.dtype != torch.uint8:
        if t.is_floating_point():
            if not torch.isfinite(t).all():
                raise ValueError(f"{name}: image contains NaN or infinite values")
            lo, hi = t.min().item(), t.max().item()
            if lo >= 0 and hi <= 1:
                t = torch.round(t.double() * 255).to(torch.uint8)
            elif lo >= 0 and hi <= 255 and bool((t == t.round()).all()):
                t = t.to(torch.uint8)
            else:
                raise ValueError(
                    f"{name}: float image values must lie in [0, 1] (or be integers in [0, 255]), got [{lo:g}, {hi:g}]"
                )
        elif t.dtype == torch.bool:
            t = t.to(torch.uint8) * 255
        else:
            t64 = t.to(torch.int64)
            lo, hi = t64.min().item(), t64.max().item()
            if lo < 0 or hi > 65535:
                raise ValueError(f"{name}: integer image values must lie in [0, 65535], got [{lo}, {hi}]")
            t = (((t64 * 255 + 32767) // 65535) if (t.dtype == torch.uint16 or hi > 255) else t64).to(torch.uint8)
    c = t.shape[0]
    if c == 1:
        t = t.expand(3, -1, -1)
    elif c in (2, 4):
        alpha = t[-1:].double() / 255
        color = t[:-1].double().expand(3, -1, -1)
        t = torch.round(alpha * color + (1 - alpha) * 255).to(torch.uint8)
    return t.contiguous()


# ----------------------------------------------------------------------------------------------
# Pillow-exact resampling in torch
# ----------------------------------------------------------------------------------------------


def _filter(kind: str, x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    if kind == "bilinear":
        return np.where(ax < 1.0, 1.0 - ax, 0.0)
    if kind == "bicubic":  # a = -0.5, as Pillow
        a = -0.5
        return np.where(
            ax < 1.0,
            ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1,
            np.where(ax < 2.0, (((ax - 5) * ax + 8) * ax - 4) * a, 0.0),
        )
    if kind == "box":
        return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        px = x * np.pi
        sinc = np.where(x == 0, 1.0, np.sin(px) / px)
        if kind == "hamming":
            return np.where(
                ax == 0,
                1.0,
                np.where(ax >= 1.0, 0.0, sinc * (float(np.float32(0.54)) + float(np.float32(0.46)) * np.cos(px))),
            )
        if kind == "lanczos":
            px3 = x / 3 * np.pi
            sinc3 = np.where(x == 0, 1.0, np.sin(px3) / px3)
            return np.where((x >= -3.0) & (x < 3.0), sinc * sinc3, 0.0)
    raise ValueError(f"resample: unsupported filter {kind!r}")


_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0, "box": 0.5, "hamming": 1.0, "lanczos": 3.0}


def pil_coefficients(in_size: int, out_size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output pixel, the first input index and
    `ksize` int32 fixed-point weights (zero past the window)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT[kind] * filterscale
    ksize = math.ceil(support) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C (int) truncation; the value is >= -0.5
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    w = _filter(kind, (taps[None, :] + xmin[:, None] - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(taps[None, :] < xmax[:, None], w, 0.0)
    ww = w.sum(axis=1, keepdims=True)
    w = np.where(ww != 0.0, w / np.where(ww != 0.0, ww, 1.0), w)
    fixed = w * (1 << _PRECISION_BITS)
    k = np.where(w < 0, np.trunc(fixed - 0.5), np.trunc(fixed + 0.5)).astype(np.int32)
    return xmin, k


def _resample_axis(x: torch.Tensor, out_size: int, kind: str, dim: int) -> torch.Tensor:
    in_size = x.shape[dim]
    xmin, k = pil_coefficients(in_size, out_size, kind)
    dev = x.device
    idx = torch.from_numpy(np.minimum(xmin[:, None] + np.arange(k.shape[1])[None, :], in_size - 1)).to(dev)
    kt = torch.from_numpy(k).to(dev)
    shape = [1] * x.ndim
    shape[dim] = out_size
    # int32 is exact: |sum| <= 255 * 2^22 * (1 + rounding) < 2^31
    acc = torch.full(
        [*x.shape[:dim], out_size, *x.shape[dim + 1 :]],
        1 << (_PRECISION_BITS - 1),
        dtype=torch.int32,
        device=dev,
    )
    xi = x.to(torch.int32)
    for t in range(k.shape[1]):
        if not k[:, t].any():
            continue
        acc += xi.index_select(dim, idx[:, t]) * kt[:, t].view(shape)
    return (acc >> _PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def resize_uint8(x: torch.Tensor, size: tuple[int, int], resample: int | str = 2) -> torch.Tensor:
    """Resize uint8 images (..., H, W) to `size` = (H', W') exactly as `PIL.Image.resize(..., resample)` does
    for 8-bit images: horizontal pass first, each pass rounded and clipped to uint8."""
    if x.dtype != torch.uint8:
        raise TypeError(f"resize_uint8: x must be uint8, got {x.dtype}")
    kind = PIL_FILTERS.get(resample, resample) if isinstance(resample, int) else str(resample).lower()
    if kind not in _SUPPORT:
        raise ValueError(
            f"resample: expected one of {sorted(PIL_FILTERS)} (PIL codes) or {sorted(_SUPPORT)}, "
            f"got {resample!r} (nearest neighbour is not supported by the torch path)"
        )
    out_h, out_w = size
    in_h, in_w = x.shape[-2:]
    if _vertical_first(in_h, in_w, out_h, out_w) and in_w != out_w:
        x = _resample_axis(x, out_h, kind, x.ndim - 2) if in_h != out_h else x
        return _resample_axis(x, out_w, kind, x.ndim - 1)
    if in_w != out_w:
        x = _resample_axis(x, out_w, kind, x.ndim - 1)
    if in_h != out_h:
        x = _resample_axis(x, out_h, kind, x.ndim - 2)
    return x


def _pillow_major() -> int:
    import PIL

    return int(PIL.__version__.split(".")[0])


def _vertical_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Pillow < 13 always runs the horizontal pass first; Pillow 13 (`ImagingResampleInner`, PR #9549)
    runs the vertical pass first when the height loses more than twice as many pixels as the width."""
    if _pillow_major() < 13:
        return False
    return (in_h - out_h) > 0 and (in_h - out_h) > (in_w - out_w) * 2
