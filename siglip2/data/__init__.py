"""Streaming NaFlex data: sources of records, decoding, NaFlex collate, rank sharding, token batching, and the
streaming pipeline (work units, DataLoader stream, device prefetch).

Shared by `siglip2 embed-dataset`, training and the benchmarks; nothing here needs a model. The modules are
sources.py (records and sources), collate.py (decoding and collate) and streaming.py (sharding, batching, the
stream); import the names from `siglip2.data`. The API:

- `Record(key, image, caption=None)`: one sample. `image` is a path (str) or the encoded bytes; `key` is stable:
  the path relative to the folder / list / table, or `<tar name without .tar>/<__key__>` for webdataset samples.
- `open_source(input, *, image_column="image", text_column=None)` -> a `FileSource` (map-style: `len(src)`,
  `src[i] -> Record`) for a folder (searched recursively, sorted; directory links followed, each real directory
  once), a .txt list (one path per line), a .csv / .tsv / .jsonl table (image column `image`; caption column
  `caption` or else `text` unless `text_column` names one; relative paths are relative to the table), or a
  `WebDatasetSource` (`.shards`, `.iter_shard(i) -> Records`, `iter(src)`) for `.tar` files, brace patterns
  (`data-{000..009}.tar`) and folders holding only tars. Lists and tables are UTF-8 (a BOM is dropped); invalid
  UTF-8, or a CSV row with more fields than the header, is a ValueError naming the file and line.
- `decode_image(record_or_ref, *, key=None, fast=None) -> PIL.Image` (RGB, EXIF-transposed). Any unusable file
  (a FIFO or a device too: never opened) raises `SampleError` (a ValueError carrying `.key` and `.reason`) so
  callers can log and skip. A webdataset sample whose key repeats one of its tar's is a SampleError, not a row.
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
- `plan_units(source, shard_size) -> [Unit(index, start, stop), ...]`: work that does not depend on the number of
  processes: `shard_size` consecutive inputs of a FileSource, or one webdataset tar, per unit (`unit.name`:
  "00007"). Rank r of W takes `units[r::W]`.
- `NaFlexStream(source, units, image_processor, *, max_num_patches, batch_size=None | tokens_per_batch=None,
  fast_decode=False, dtype=None, tokenizer=None)`: iterates the units in chunks and yields one item per chunk,
  {"unit", "last", "n_inputs", "batches" (naflex_collate dicts with "num_tokens"), "errors" [(key, reason)]};
  every unit ends with an item whose "last" is True. `.loader(num_workers=..., pin_memory=...)` is a DataLoader
  that runs it in workers (`.as_dataset()` the IterableDataset); `process_chunk` is the per-chunk step.
  `as_iterable_dataset(iterable)` wraps any iterable the same way.
- `DevicePrefetcher(items, device)`: flattens items into `StreamBatch(item, batch | None, first, last)` and copies
  the next batch to the device on a side stream while the current one runs (CUDA; on CPU batches pass through).

"""

from .collate import (
    decode_image,
    naflex_collate,
    num_patches,
)
from .sources import (
    CAPTION_COLUMNS,
    IMAGE_EXTENSIONS,
    WDS_IMAGE_MEMBERS,
    FileSource,
    Record,
    SampleError,
    WebDatasetSource,
    open_source,
)
from .streaming import (
    DevicePrefetcher,
    NaFlexStream,
    StreamBatch,
    Unit,
    as_iterable_dataset,
    iter_token_batches,
    pack_by_tokens,
    plan_units,
    rank_slice,
    shard_for_rank,
    world_info,
)

__all__ = [
    "CAPTION_COLUMNS",
    "IMAGE_EXTENSIONS",
    "WDS_IMAGE_MEMBERS",
    "DevicePrefetcher",
    "FileSource",
    "NaFlexStream",
    "Record",
    "SampleError",
    "StreamBatch",
    "Unit",
    "WebDatasetSource",
    "as_iterable_dataset",
    "decode_image",
    "iter_token_batches",
    "naflex_collate",
    "num_patches",
    "open_source",
    "pack_by_tokens",
    "plan_units",
    "rank_slice",
    "shard_for_rank",
    "world_info",
]
