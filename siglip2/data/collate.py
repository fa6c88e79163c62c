"""Decoding and NaFlex collate: a record to an RGB PIL image (`decode_image`, optionally JPEG draft decoding at
the NaFlex target's scale), the valid tokens of an image (`num_patches`), and a batch of images (+ captions) to
the model's inputs (`naflex_collate`). The API: siglip2/data/__init__.py.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .sources import Record, SampleError

if TYPE_CHECKING:
    import PIL.Image
    import torch

    from ..processing.image_processing import Siglip2ImageProcessor


_SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that transpose width and height


def decode_image(
    ref: Record | str | os.PathLike | bytes, *, key: str | None = None, fast: tuple[int, int] | None = None
) -> PIL.Image.Image:
    """Decode a Record / path / bytes to an RGB PIL image, EXIF-transposed (as `siglip2.pipeline.load_images`).

    Raises SampleError(key, reason) for a missing, truncated, corrupt or non-image file (or a decompression bomb).
    fast=(patch_size, max_num_patches): JPEGs are decoded with `Image.draft` at the smallest DCT scale that is still
    at least the NaFlex target of the full-size image, and the full (h, w) goes to `info["naflex_full_size"]`, so
    `naflex_collate` resizes it to exactly the target of the full size with the processor's filter. Other formats
    decode in full (and are marked the same way).
    """
    import PIL.Image
    import PIL.ImageOps

    from ..processing.image_utils import pil_to_rgb

    if isinstance(ref, Record):
        key = ref.key if key is None else key
        ref = ref.image
    key = key if key is not None else (ref if isinstance(ref, str) else "<bytes>")
    try:
        src = io.BytesIO(ref) if isinstance(ref, (bytes, bytearray, memoryview)) else ref
        if not isinstance(src, io.BytesIO) and not stat.S_ISREG(os.stat(src).st_mode):
            # opening a FIFO blocks until someone writes to it; a device may never end
            raise SampleError(key, "not a regular file")
        img = PIL.Image.open(src)
        full_size = None
        if fast is not None:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1) if img.format in ("JPEG", "MPO", "TIFF", "WEBP") else 1
            if orientation in _SWAPPED_ORIENTATIONS:
                w, h = h, w
            full_size = (h, w)
            if img.format in ("JPEG", "MPO"):
                th, tw = _target(h, w, *fast)
                req = (th, tw) if orientation in _SWAPPED_ORIENTATIONS else (tw, th)
                img.draft("RGB", req)
        img = PIL.ImageOps.exif_transpose(img)
        img.load()
        img = pil_to_rgb(img, str(key))
    except SampleError:
        raise
    except FileNotFoundError:
        raise SampleError(key, "missing file") from None
    except PIL.Image.DecompressionBombError as e:
        raise SampleError(key, f"refused as a decompression bomb ({e})") from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise SampleError(key, f"cannot decode ({type(e).__name__}: {e})") from None
    if full_size is not None:
        img.info["naflex_full_size"] = full_size
    return img


def _target(h: int, w: int, patch_size: int, max_num_patches: int) -> tuple[int, int]:
    from ..processing.image_utils import get_image_size_for_max_num_patches

    return get_image_size_for_max_num_patches(h, w, patch_size, max_num_patches)


def num_patches(height: int, width: int, patch_size: int, max_num_patches: int) -> int:
    """Valid tokens (patches) NaFlex gives an image of this size."""
    th, tw = _target(height, width, patch_size, max_num_patches)
    return (th // patch_size) * (tw // patch_size)


def _as_pil(img: Any, name: str) -> PIL.Image.Image:
    import PIL.Image
    import torch

    from ..processing.image_utils import to_rgb_uint8

    rgb = to_rgb_uint8(img, name)
    if isinstance(rgb, PIL.Image.Image):
        return rgb
    a = rgb.permute(1, 2, 0).cpu().numpy() if isinstance(rgb, torch.Tensor) else rgb
    return PIL.Image.fromarray(a)


def _resize_to_target(
    img: PIL.Image.Image, image_processor: Siglip2ImageProcessor, patch_size: int, max_num_patches: int
) -> PIL.Image.Image:
    """Resize to the NaFlex target with the processor's filter. A fast-decoded image's target comes from its full
    size (`info["naflex_full_size"]`), so it gets exactly the size exact decoding would."""
    h, w = img.info.get("naflex_full_size", (img.height, img.width))
    th, tw = _target(h, w, patch_size, max_num_patches)
    if img.size != (tw, th):
        img = img.resize((tw, th), resample=int(image_processor.resample))
    return img


def naflex_collate(
    samples: Sequence[tuple],
    image_processor: Siglip2ImageProcessor,
    *,
    max_num_patches: int | None = None,
    tokenizer: Callable[..., Mapping[str, Any]] | None = None,
    text_kwargs: dict | None = None,
    dtype: torch.dtype | None = None,
) -> dict:
    """[(key, PIL image, caption | None), ...] -> a batch dict (see the module docstring).

    Images are resized to the NaFlex target of their size, or, when `decode_image(fast=...)` decoded them, of their
    full size (so a fast-decoded image gets exactly the size exact decoding gives, for any budget). `dtype` casts
    pixel_values (e.g. the model's half dtype, to halve pinned/H2D bytes; the model casts to its dtype anyway).
    `text_kwargs` default to SigLIP2's: padding to 64 with truncation.
    """
    import torch

    from ..processing.image_processing import Siglip2ImageProcessor
    from ..processing.image_utils import positive_int

    if not samples:
        raise ValueError("samples: got an empty batch")
    if not isinstance(image_processor, Siglip2ImageProcessor):
        raise TypeError(f"image_processor: expected a Siglip2ImageProcessor, got {type(image_processor).__name__}")
    P = int(image_processor.patch_size)
    # only None means the processor's budget: a 0 is an error, not a silent default
    M = image_processor.max_num_patches if max_num_patches is None else max_num_patches
    M = positive_int("max_num_patches", M)
    keys = [s[0] for s in samples]
    images = [s[1] for s in samples]
    if image_processor.do_resize and image_processor.backend == "pil":
        # Resize the PIL images here, then patchify without resizing: the same Pillow resize of the same RGB image
        # as the processor's, without its two full-size numpy copies (~5% of the time on 12 MP photos).
        images = [_resize_to_target(_as_pil(im, f"samples[{i}]"), image_processor, P, M) for i, im in enumerate(images)]
        out = _no_resize(image_processor).preprocess(images, max_num_patches=M)
    else:
        out = image_processor.preprocess(images, max_num_patches=M)
    batch = dict(out)
    if dtype is not None:
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
    batch["keys"] = keys
    if tokenizer is not None:
        caps = [s[2] if len(s) > 2 else None for s in samples]
        kw = dict({"padding": "max_length", "max_length": 64, "truncation": True}, **(text_kwargs or {}))
        enc = tokenizer([c if c is not None else "" for c in caps], **kw)
        batch.update(enc)
        batch["has_caption"] = torch.tensor([c is not None for c in caps])
    return batch


_NO_RESIZE: dict = {}


def _no_resize(image_processor: Siglip2ImageProcessor) -> Siglip2ImageProcessor:
    """A copy of the processor with do_resize=False (fast-decoded images are already at their NaFlex size)."""
    k = id(image_processor)
    hit = _NO_RESIZE.get(k)
    if hit is None or hit[0] is not image_processor:
        import copy

        p = copy.copy(image_processor)
        p.do_resize = False
        _NO_RESIZE[k] = hit = (image_processor, p)
    return hit[1]
