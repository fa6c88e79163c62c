"""What a NaFlex budget does to a set of images, without running a model: inputs, shapes, padding, FLOPs.

Used by `siglip2 profile` (siglip2/profile/cli.py). Everything here is computed from image sizes alone: a file's size
is read from its header (plus the EXIF orientation), so scanning a large folder decodes no pixels. The NaFlex grid
of each image comes from the processor's own `target_size` (transformers' binary search), so the grids are exactly
the `spatial_shapes` the processor returns.

The synthetic set (`--synthetic N`) draws native sizes from a distribution fitted to published COCO statistics
(COCO 2014 train, the Lextal/SotA-CV dataset notes, content/datasets/coco_detection.md): "90% of images have between
167,500 and 355,840 pixels" and "90% of images have a height/width ratio between 0.6 and 1.5". We take log(pixels)
and log(height/width) as independent normals whose 5% and 95% quantiles are those bounds. This is web photography
at roughly 640 px on the long side; phone-camera originals (12 MP) or documents and panoramas behave differently:
profile your own files for those.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..models.configuration import Siglip2VisionConfig
    from ..processing.image_processing import Siglip2ImageProcessor

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}

# 5% / 95% quantiles of the COCO statistics quoted in the module docstring.
COCO_PIXELS_P05_P95 = (167_500, 355_840)
COCO_RATIO_P05_P95 = (0.6, 1.5)  # height / width
_Z95 = 1.6448536269514722  # standard normal 95% quantile

# Vision towers of the released SigLIP2 sizes (docs: ../shared/docs/upstream-spec.md section 1.5), and a tiny one
# for quick runs. Fields are Siglip2VisionConfig's.
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=16),
    "b16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16),
    "l16": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=16),
    "so400m16": dict(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, patch_size=16
    ),
    "g16": dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=40, num_attention_heads=16, patch_size=16),
}


@dataclass
class Image:
    """One input: native (height, width) after EXIF orientation, and where its pixels come from."""

    height: int
    width: int
    path: str | None = None  # None: synthetic
    index: int = 0  # the synthetic image's index (its pixels are generated from it)


def synthetic_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """n (height, width) pairs from the COCO-fitted distribution of the module docstring (deterministic in seed)."""
    if n < 0:
        raise ValueError(f"--synthetic: expected a number of images >= 0, got {n}")
    rng = np.random.default_rng(seed)
    lp = [math.log(v) for v in COCO_PIXELS_P05_P95]
    lr = [math.log(v) for v in COCO_RATIO_P05_P95]
    log_px = rng.normal((lp[0] + lp[1]) / 2, (lp[1] - lp[0]) / (2 * _Z95), n)
    log_r = rng.normal((lr[0] + lr[1]) / 2, (lr[1] - lr[0]) / (2 * _Z95), n)
    h = np.maximum(1, np.rint(np.exp((log_px + log_r) / 2))).astype(int)
    w = np.maximum(1, np.rint(np.exp((log_px - log_r) / 2))).astype(int)
    return list(zip(h.tolist(), w.tolist()))


def synthetic_pixels(image: Image, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 pixels for a synthetic image: smooth random colour fields (bicubic-upsampled 6x8 noise)
    plus fine noise, so that resizing changes the content (a flat image would embed identically at any budget)."""
    import PIL.Image

    rng = np.random.default_rng([seed, image.index])
    coarse = PIL.Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((image.width, image.height), PIL.Image.Resampling.BICUBIC), dtype=np.int16)
    fine = rng.integers(-24, 25, base.shape, dtype=np.int16)
    return np.clip(base + fine, 0, 255).astype(np.uint8)


def _header_size(path: str) -> tuple[int, int]:
    """(height, width) as the processor will see it: header size, swapped for EXIF orientations 5-8."""
    import PIL.Image

    try:
        with PIL.Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Exception as e:  # OSError, SyntaxError, ValueError, Pillow's DecompressionBombError (> ~179 MP) ...
        raise ValueError(f"{path!r}: cannot read as an image ({type(e).__name__}: {e})") from e
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def collect_paths(inputs: list[str]) -> list[str]:
    """Files as given; folders recursively (files with an image extension, sorted). Missing paths raise."""
    out = []
    for x in inputs:
        if os.path.isdir(x):
            found = []
            for root, dirs, files in os.walk(x):
                dirs.sort()
                found += [
                    os.path.join(root, f) for f in sorted(files) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
                ]
            if not found:
                raise ValueError(f"{x!r}: folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            out += found
        elif os.path.isfile(x):
            out.append(x)
        else:
            raise FileNotFoundError(f"{x!r}: no such file or folder")
    return out


def load_images(
    inputs: list[str], synthetic: int, seed: int = 0, progress: bool = True
) -> tuple[list[Image], list[dict]]:
    """(the images, the files skipped as unreadable: {"path", "error", "stage": "scan"}). One damaged file in a
    collection costs that file, not the profile (as in `siglip2 embed-dataset`); the report lists each."""
    from tqdm.auto import tqdm

    images, unreadable = [], []
    paths = collect_paths(inputs)
    for p in tqdm(paths, desc="scanning images", unit="img", disable=not progress or not paths):
        try:
            h, w = _header_size(p)
        except ValueError as e:
            cause = e.__cause__ or e
            unreadable.append({"path": p, "error": f"{type(cause).__name__}: {cause}", "stage": "scan"})
            continue
        images.append(Image(h, w, path=p))
    images += [Image(h, w, index=i) for i, (h, w) in enumerate(synthetic_sizes(synthetic, seed))]
    return images, unreadable


def grids(images: list[Image], processor: Siglip2ImageProcessor, max_num_patches: int) -> np.ndarray:
    """(n, 2) int64 NaFlex grids (h, w in patches): the processor's spatial_shapes for these images."""
    P = processor.patch_size
    out = np.empty((len(images), 2), dtype=np.int64)
    # real collections repeat a few hundred sizes; the binary search runs once per size
    cache: dict[tuple[int, int], tuple[int, int]] = {}
    for i, im in enumerate(images):
        key = (im.height, im.width)
        if key not in cache:
            th, tw = processor.target_size(im.height, im.width, P, max_num_patches)
            cache[key] = th // P, tw // P
        out[i] = cache[key]
    return out


def flops_per_image(cfg: Siglip2VisionConfig, tokens: np.ndarray | Sequence[int]) -> dict[str, float]:
    """Forward FLOPs of the vision tower for images of `tokens` valid tokens (an array; the mean is returned).

    Per encoder layer and token, linear = 2*(4*D^2 + 2*D*I) (q, k, v, out projections and the MLP); attention =
    4*s*D per token (QK^T and PV over the s tokens of its image). Patch embedding: 2*K*D per token, K = 3*P^2.
    The pooling head (one probe query) adds 4*s*D^2 (its k, v), 4*D^2 + 4*D*I (q, out, MLP) and 4*s*D
    (attention). Layer norms, activations and the position-table resize are not counted (a few % at most).
    """
    s = np.asarray(tokens, dtype=np.float64)
    D, I, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    K = cfg.num_channels * cfg.patch_size**2
    linear = n * s * 2 * (4 * D * D + 2 * D * I)
    attention = n * 4 * s * s * D
    if cfg.vision_use_head:
        linear = linear + 4 * s * D * D + 4 * D * D + 4 * D * I
        attention = attention + 4 * s * D
    out = {
        "linear": float(np.mean(linear)),
        "attention": float(np.mean(attention)),
        "patch_embed": float(np.mean(2 * s * K * D)),
    }
    out["total"] = out["linear"] + out["attention"] + out["patch_embed"]
    return out


def shape_stats(images: list[Image], g: np.ndarray, max_num_patches: int, cfg: Siglip2VisionConfig) -> dict:
    """The model-free numbers of one budget (the JSON entry's shape, padding and FLOP keys)."""
    P = cfg.patch_size
    tokens = g[:, 0] * g[:, 1]
    n = len(images)
    native = np.array([[im.height, im.width] for im in images], dtype=np.float64)
    target = g.astype(np.float64) * P
    upsampled = target[:, 0] * target[:, 1] > native[:, 0] * native[:, 1]
    ratio = (target[:, 0] / target[:, 1]) / (native[:, 0] / native[:, 1])
    aspect_err = np.maximum(ratio, 1 / ratio) - 1
    shapes, counts = np.unique(g, axis=0, return_counts=True)
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], tuple(shapes[i])))
    return {
        "max_num_patches": int(max_num_patches),
        "images": n,
        "tokens_mean": float(tokens.mean()),
        "tokens_p50": float(np.percentile(tokens, 50)),
        "tokens_p95": float(np.percentile(tokens, 95)),
        "tokens_min": int(tokens.min()),
        "tokens_max": int(tokens.max()),
        # padded (transformers' layout): every image is padded to max_num_patches rows
        "padding_fraction_padded": float(1 - tokens.sum() / (n * max_num_patches)),
        # packed (siglip2.fast): the encoder runs on the concatenated valid tokens only
        "padding_fraction_packed": float(1 - tokens.sum() / tokens.sum()),
        "upsampled_fraction": float(upsampled.mean()),
        "aspect_error_mean": float(aspect_err.mean()),
        "aspect_error_p95": float(np.percentile(aspect_err, 95)),
        "spatial_shapes_hist": [[int(shapes[i][0]), int(shapes[i][1]), int(counts[i])] for i in order],
        "flops_per_image_packed": flops_per_image(cfg, tokens),
        "flops_per_image_padded": flops_per_image(cfg, np.full(n, max_num_patches)),
    }
