"""Streaming NaFlex data pipeline: sources of records, decoding, NaFlex collate, rank sharding, token batching.

Shared by `siglip2 embed-dataset` and training; nothing here needs a model. The API:

- `Record(key, image, caption=None)`: one sample. `image` is a path (str) or the encoded bytes; `key` is stable:
  the path relative to the folder / list / table, or `<tar name without .tar>/<__key__>` for webdataset samples.
- `open_source(input, *, image_column="image", text_column=None)` -> a `FileSource` (map-style: `len(src)`,
  `src[i] -> Record`) for a folder (searched recursively, sorted), a .txt list (one path per line), a .csv / .tsv /
  .jsonl table (image column `image`; caption column `caption` or else `text` unless `text_column` names one;
  relative paths are relative to the table), or a `WebDatasetSource` (`.shards`, `.iter_shard(i) -> Records`,
  `iter(src)`) for `.tar` files, brace patterns (`data-{000..009}.tar`) and folders holding only tars.
- `decode_image(record_or_ref, *, key=None, fast=None) -> PIL.Image` (RGB, EXIF-transposed). Any unusable file
  raises `SampleError` (a ValueError carrying `.key` and `.reason`) so callers can log and skip.
  `fast=(patch_size, max_num_patches)` decodes JPEGs at reduced size (`Image.draft`) and records the full size in
  `img.info["naflex_full_size"]`, from which `naflex_collate` computes the exact NaFlex target.
- `num_patches(height, width, patch_size, max_num_patches)`: the valid tokens NaFlex gives an image.
- `naflex_collate(samples, image_processor, *, max_num_patches=None, tokenizer=None, text_kwargs=None,
  dtype=None)`: [(key, PIL image, caption | None), ...] -> dict with `pixel_values` (B, M, P*P*3),
  `pixel_attention_mask` (B, M) int32, `spatial_shapes` (B, 2) int64, `keys` (list), and, with a tokenizer,
  `input_ids` / `attention_mask` (B, 64 by default) plus `has_caption` (bool (B,)); missing captions tokenize "".
- `rank_slice(n, rank, world_size)` / `shard_for_rank(items, rank, world_size)`: deterministic disjoint strided
  parts whose union is everything; `world_info()` reads (rank, world_size) from torch.distributed or torchrun's env.
- `pack_by_tokens(num_tokens, tokens_per_batch)` -> list of index lists (consecutive, each batch's tokens <= T,
  every index exactly once); `iter_token_batches(items, num_tokens_fn, tokens_per_batch)` does it on a stream.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import PIL.Image
    import torch

    from ..processing.image_processing import Siglip2ImageProcessor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif")
WDS_IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "jfif")
CAPTION_COLUMNS = ("caption", "text")


class SampleError(ValueError):
    """A sample that cannot be used (missing, truncated, corrupt, not an image). `.key` and `.reason` are what an
    errors file records."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


@dataclass(frozen=True)
class Record:
    key: str
    image: str | bytes  # a file path or the encoded image bytes
    caption: str | None = None


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


class FileSource:
    """Map-style source: a list of Records (folder, path list, CSV/JSONL table)."""

    def __init__(self, records: list[Record], description: str = "") -> None:
        self.records, self.description = records, description
        keys = set()
        for r in records:
            if r.key in keys:
                raise ValueError(f"{description}: key {r.key!r} appears twice; keys must be unique")
            keys.add(r.key)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    @property
    def has_captions(self) -> bool:
        return any(r.caption is not None for r in self.records)


class WebDatasetSource:
    """webdataset tar shards, read with the `webdataset` library; captions from the `txt` member."""

    def __init__(self, shards: list[str], text_member: str = "txt") -> None:
        if not shards:
            raise ValueError("webdataset input: no .tar shards found")
        self.shards, self.text_member = list(shards), text_member

    @staticmethod
    def shard_name(url: str) -> str:
        base = os.path.basename(url.rstrip("/"))
        return base.removesuffix(".tar")

    def iter_shard(self, i: int, on_error: Callable[[SampleError], None] | None = None) -> Iterator[Record]:
        """The Records of shard `i`, in tar order. A sample with no image member, or an unreadable tar, becomes a
        SampleError passed to `on_error` (raised when `on_error` is None)."""
        import webdataset as wds

        url = self.shards[i]
        name = self.shard_name(url)
        errors: list[Exception] = []

        def handler(exn: Exception) -> bool:
            errors.append(exn)
            return False  # stop this tar: past a read error its stream position is unreliable

        # webdataset's own __init__.pyi imports WebDataset without re-exporting it, so pyright misses the public name
        ds = wds.WebDataset(  # pyright: ignore[reportAttributeAccessIssue]
            url, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False, handler=handler
        )
        report = on_error or _raise
        for sample in ds:
            key = f"{name}/{sample['__key__']}"
            img = next((sample[m] for m in WDS_IMAGE_MEMBERS if m in sample), None)
            if img is None:
                members = sorted(k for k in sample if not k.startswith("__"))
                report(SampleError(key, f"no image member (has {members})"))
                continue
            cap = sample.get(self.text_member)
            yield Record(key, bytes(img), cap.decode("utf-8", "replace") if cap is not None else None)
        for e in errors:
            report(SampleError(f"{name}/*", f"unreadable tar {url!r} ({type(e).__name__}: {e})"))

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self.shards)):
            yield from self.iter_shard(i)


def _raise(e: BaseException) -> NoReturn:
    raise e


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def open_source(
    input: str | os.PathLike, *, image_column: str = "image", text_column: str | None = None
) -> FileSource | WebDatasetSource:
    """A FileSource or WebDatasetSource for `input` (see the module docstring)."""
    s = os.fspath(input)
    if "{" in s or s.endswith(".tar") or "::" in s:
        from webdataset.shardlists import expand_urls

        shards = expand_urls(s)
        missing = [u for u in shards if "://" not in u and not os.path.exists(u)]
        if missing:
            raise FileNotFoundError(f"input: webdataset shard {missing[0]!r} does not exist")
        return WebDatasetSource(shards)
    if os.path.isdir(s):
        files = []
        for root, dirs, names in os.walk(s, followlinks=True):
            dirs.sort()
            files.extend(os.path.join(root, n) for n in names)
        images = sorted(f for f in files if _is_image_name(f))
        if not images:
            tars = sorted(f for f in files if f.endswith(".tar"))
            if tars:
                return WebDatasetSource(tars)
            raise ValueError(f"input: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {s!r}")
        return FileSource([Record(os.path.relpath(f, s).replace(os.sep, "/"), f) for f in images], description=s)
    if not os.path.isfile(s):
        raise FileNotFoundError(f"input: no such file or directory {s!r}")
    ext = os.path.splitext(s)[1].lower()
    if ext == ".txt":
        return _list_source(s)
    if ext in (".csv", ".tsv", ".jsonl"):
        return _table_source(s, ext, image_column, text_column)
    raise ValueError(
        f"input: expected a folder, a .txt list, a .csv/.tsv/.jsonl table or webdataset .tar shards, got {s!r}"
    )


def _resolve(base: str, p: str) -> str:
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.join(base, p)


def _list_source(path: str) -> FileSource:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    recs = [Record(line, _resolve(base, line)) for line in lines if line and not line.startswith("#")]
    if not recs:
        raise ValueError(f"input: {path!r} lists no paths")
    return FileSource(recs, description=path)


def _table_source(path: str, ext: str, image_column: str, text_column: str | None) -> FileSource:
    base = os.path.dirname(os.path.abspath(path))
    rows: list[dict] = []
    if ext == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"input: {path}:{n} is not valid JSON ({e})") from e
                    if not isinstance(rows[-1], dict):
                        raise ValueError(f"input: {path}:{n}: expected a JSON object per line")
    else:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ","))
    if not rows:
        raise ValueError(f"input: {path!r} has no rows")
    columns = set().union(*(r.keys() for r in rows))
    if image_column not in columns:
        raise ValueError(f"image_column: {path!r} has no column {image_column!r} (columns: {sorted(columns)})")
    if text_column is not None and text_column not in columns:
        raise ValueError(f"text_column: {path!r} has no column {text_column!r} (columns: {sorted(columns)})")
    text_col = text_column or next((c for c in CAPTION_COLUMNS if c in columns), None)
    recs = []
    for n, r in enumerate(rows):
        ref = r.get(image_column)
        if not isinstance(ref, str) or not ref:
            raise ValueError(f"input: {path!r} row {n}: column {image_column!r} is empty or not a string")
        cap = r.get(text_col) if text_col else None
        recs.append(Record(ref, _resolve(base, ref), None if cap is None else str(cap)))
    return FileSource(recs, description=path)


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Collate
# ----------------------------------------------------------------------------------------------


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

    if not samples:
        raise ValueError("samples: got an empty batch")
    if not isinstance(image_processor, Siglip2ImageProcessor):
        raise TypeError(f"image_processor: expected a Siglip2ImageProcessor, got {type(image_processor).__name__}")
    P = int(image_processor.patch_size)
    M = int(max_num_patches or image_processor.max_num_patches)
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


# ----------------------------------------------------------------------------------------------
# Rank sharding and token batching
# ----------------------------------------------------------------------------------------------


def world_info() -> tuple[int, int]:
    """(rank, world_size): from an initialized torch.distributed group, else torchrun's RANK / WORLD_SIZE."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank/world_size: expected 0 <= rank < world_size, got rank {rank}, world_size {world_size}")


def rank_slice(n: int, rank: int, world_size: int) -> range:
    """Indices rank, rank + world_size, ... of range(n): disjoint over ranks, union = range(n)."""
    _check_rank(rank, world_size)
    return range(rank, n, world_size)


def shard_for_rank(items: Sequence, rank: int, world_size: int) -> list:
    return [items[i] for i in rank_slice(len(items), rank, world_size)]


def pack_by_tokens(num_tokens: Sequence[int], tokens_per_batch: int) -> list[list[int]]:
    """Greedy consecutive packing: each batch's tokens <= tokens_per_batch; every index exactly once, in order."""
    return [[i for i, _ in b] for b in iter_token_batches(enumerate(num_tokens), lambda x: x[1], tokens_per_batch)]


def iter_token_batches(items: Iterable, num_tokens_fn: Callable, tokens_per_batch: int) -> Iterator[list]:
    """Group a stream into consecutive batches whose num_tokens_fn(item) sum stays <= tokens_per_batch."""
    if int(tokens_per_batch) <= 0:
        raise ValueError(f"tokens_per_batch: must be positive, got {tokens_per_batch}")
    batch, total = [], 0
    for item in items:
        n = int(num_tokens_fn(item))
        if n > tokens_per_batch:
            raise ValueError(
                f"tokens_per_batch: {tokens_per_batch} is smaller than one item's {n} tokens "
                f"(use at least max_num_patches)"
            )
        if batch and total + n > tokens_per_batch:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += n
    if batch:
        yield batch
