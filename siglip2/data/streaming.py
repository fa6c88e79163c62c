"""Streaming a collection to the device: rank sharding, token batching, work units, the NaFlex stream that decodes
and batches in DataLoader workers, and the prefetcher that copies the next batch while the current one runs.

The pipeline of `siglip2 embed-dataset`, public so that other tools and the benchmarks drive the same code:

    units = plan_units(source, shard_size)                      # independent of the number of processes
    stream = NaFlexStream(source, units[rank::world], image_processor, max_num_patches=256, batch_size=64)
    for item, batch, first, last in DevicePrefetcher(stream.loader(num_workers=4, pin_memory=True), device):
        ...                                                     # batch: naflex_collate's dict, on `device`

The API is listed in siglip2/data/__init__.py.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .collate import decode_image, naflex_collate, num_patches
from .sources import FileSource, SampleError, WebDatasetSource

if TYPE_CHECKING:
    import torch
    import torch.utils.data

    from ..processing.image_processing import Siglip2ImageProcessor

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


# ----------------------------------------------------------------------------------------------
# Work units
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A piece of work that does not depend on the number of processes: inputs [start, stop) of a map-style
    source, or webdataset shard `index` (start = stop = 0). `name` is its zero-padded index."""

    index: int
    start: int = 0  # file sources: inputs [start, stop)
    stop: int = 0

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


def plan_units(source: FileSource | WebDatasetSource, shard_size: int) -> list[Unit]:
    """`shard_size` consecutive inputs of a FileSource per unit, or one unit per webdataset tar."""
    if isinstance(source, FileSource):
        n = len(source)
        return [Unit(j, j * shard_size, min(n, (j + 1) * shard_size)) for j in range(math.ceil(n / shard_size))]
    return [Unit(j) for j in range(len(source.shards))]


# ----------------------------------------------------------------------------------------------
# The stream: decode, NaFlex batches and collate, in DataLoader workers
# ----------------------------------------------------------------------------------------------


class NaFlexStream:
    """Iterates `units` of `source` in chunks and yields one item per chunk: a dict with "unit" (its index), "last"
    (the chunk ends its unit), "n_inputs" (records read), "batches" (`naflex_collate` dicts, each with its
    "num_tokens") and "errors" ([(key, reason), ...] of the records that could not be used).

    A chunk is what one worker decodes before batching: one batch (`batch_size` images), or, with
    `tokens_per_batch`, four budgets' worth of images packed greedily into batches of at most that many valid
    tokens. Map-style sources spread chunks over DataLoader workers round-robin (so they arrive in order);
    webdataset units (tars) go whole to one worker each. Every unit yields at least one item, its last, even when
    all its images are bad. `fast_decode` decodes JPEGs at reduced size (`decode_image(fast=...)`); `dtype`
    casts pixel_values; `tokenizer` adds the captions' `input_ids`. `process_chunk` is the per-chunk step, which a
    subclass may wrap (bench/bench_data.py stamps when it ran).
    """

    def __init__(
        self,
        source: FileSource | WebDatasetSource,
        units: Sequence[Unit],
        image_processor: Siglip2ImageProcessor,
        *,
        max_num_patches: int,
        batch_size: int | None = None,
        tokens_per_batch: int | None = None,
        fast_decode: bool = False,
        dtype: torch.dtype | None = None,
        tokenizer: Callable[..., Any] | None = None,
    ) -> None:
        if (batch_size is None) == (tokens_per_batch is None):
            raise ValueError(
                f"batch_size / tokens_per_batch: give exactly one, got {batch_size} and {tokens_per_batch}"
            )
        self.source, self.units, self.image_processor = source, list(units), image_processor
        self.max_num_patches, self.batch_size, self.tokens_per_batch = max_num_patches, batch_size, tokens_per_batch
        self.fast_decode, self.dtype, self.tokenizer = fast_decode, dtype, tokenizer
        # a chunk is what one worker decodes before batching: one batch, or a few token budgets' worth
        self.chunk: int = (
            batch_size if batch_size is not None else max(1, int(tokens_per_batch or 0) // max_num_patches) * 4
        )

    def __iter__(self) -> Iterator[dict]:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        wid, k = (info.id, info.num_workers) if info else (0, 1)
        if isinstance(self.source, FileSource):
            chunks = [
                (u, s, min(s + self.chunk, u.stop)) for u in self.units for s in range(u.start, u.stop, self.chunk)
            ]
            for u, s, e in chunks[wid::k]:
                yield self.process_chunk(u, e >= u.stop, [self.source[i] for i in range(s, e)], [])
            return
        for u in self.units[wid::k]:
            errors: list = []
            records = self.source.iter_shard(u.index, on_error=lambda e, errs=errors: errs.append((e.key, e.reason)))
            prev = None
            for chunk in _chunked(records, self.chunk):
                if prev is not None:
                    yield self.process_chunk(u, False, prev, _take(errors))
                prev = chunk
            yield self.process_chunk(u, True, prev or [], _take(errors))  # always one last item: marks the unit done

    def process_chunk(self, unit: Unit, last: bool, records: list, errors: list) -> dict:
        """Decode `records` (bad ones join `errors`), group them into batches, collate: one stream item."""
        P, M = int(self.image_processor.patch_size), self.max_num_patches
        good = []
        for r in records:
            if r.caption is not None and not _encodable(r.caption):
                # a lone surrogate (JSON "\\udcff") has no UTF-8 and would fail the whole batch in the tokenizer
                errors.append((r.key, "caption is not valid Unicode (a lone surrogate)"))
                continue
            try:
                img = decode_image(r, fast=(P, M) if self.fast_decode else None)
            except SampleError as e:
                errors.append((e.key, e.reason))
                continue
            h, w = img.info.get("naflex_full_size", (img.height, img.width))
            good.append(((r.key, img, r.caption), num_patches(h, w, P, M)))
        if self.tokens_per_batch is None:
            groups = [good] if good else []
        else:
            groups = list(iter_token_batches(good, lambda x: x[1], self.tokens_per_batch))
        batches = []
        for g in groups:
            b = naflex_collate(
                [s for s, _ in g], self.image_processor, max_num_patches=M, tokenizer=self.tokenizer, dtype=self.dtype
            )
            b["num_tokens"] = sum(n for _, n in g)
            batches.append(b)
        return {"unit": unit.index, "last": last, "n_inputs": len(records), "batches": batches, "errors": errors}

    def as_dataset(self) -> torch.utils.data.IterableDataset:
        """The stream as a torch IterableDataset (torch is imported only here, not with siglip2.data)."""
        return as_iterable_dataset(self)

    def loader(
        self, *, num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int = 2
    ) -> torch.utils.data.DataLoader:
        """A DataLoader over the stream: items as they are (batch_size=None), decoded in `num_workers` workers
        (`prefetch_factor` items each ahead; 0 workers: in this process)."""
        import torch.utils.data

        return torch.utils.data.DataLoader(
            self.as_dataset(),
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if num_workers else None,
        )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _chunked(it: Iterable, n: int) -> Iterator[list]:
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def _take(errors: list) -> list:
    out = list(errors)
    errors.clear()
    return out


def as_iterable_dataset(iterable: Iterable) -> torch.utils.data.IterableDataset:
    """Any iterable as a torch IterableDataset (its `__iter__` runs in each DataLoader worker)."""
    import torch.utils.data

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(iterable)

    return Stream()


# ----------------------------------------------------------------------------------------------
# Prefetching to the device
# ----------------------------------------------------------------------------------------------


class StreamBatch(NamedTuple):
    """One batch of a stream item: the item, its batch (None for an item without any), whether the batch is the
    item's first and whether it is its last (an item's errors and input count belong to its first)."""

    item: dict
    batch: dict | None
    first: bool
    last: bool


class DevicePrefetcher:
    """Flattens stream items into StreamBatch(item, batch | None, first, last) and copies the next batch's tensors
    to `device` (non_blocking, from pinned memory, on a side stream) while the current one runs. On CPU batches
    pass through. An item without batches (all its images bad) still comes once, with batch None."""

    def __init__(self, items: Iterable[dict], device: torch.device) -> None:
        import torch

        self.items, self.device = items, device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _flat(self) -> Iterator[StreamBatch]:
        for item in self.items:
            n = len(item["batches"])
            if n == 0:
                yield StreamBatch(item, None, True, True)
            for i, b in enumerate(item["batches"]):
                yield StreamBatch(item, b, i == 0, i == n - 1)

    def _to(self, entry: StreamBatch) -> StreamBatch:
        import torch

        if self.stream is None or entry.batch is None:
            return entry
        with torch.cuda.stream(self.stream):
            b = {
                k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                for k, v in entry.batch.items()
            }
        return entry._replace(batch=b)

    def _ready(self, entry: StreamBatch) -> StreamBatch:
        import torch

        if self.stream is not None and entry.batch is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_stream(self.stream)
            for v in entry.batch.values():
                if isinstance(v, torch.Tensor):
                    v.record_stream(cur)
        return entry

    def __iter__(self) -> Iterator[StreamBatch]:
        nxt = None
        for entry in self._flat():
            cur, nxt = nxt, self._to(entry)  # the copy of the next batch is queued before the current one runs
            if cur is not None:
                yield self._ready(cur)
        if nxt is not None:
            yield self._ready(nxt)
