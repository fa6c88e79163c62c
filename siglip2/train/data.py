"""Training batches for `siglip2 train`: the step plan (NaFlex sequence-length buckets, token budgets, mixed
budgets), rank slicing of the global batch, and the DataLoader that decodes, resizes and tokenizes in its workers.

The plan is a pure function of (seed, step, position) and never reads data, so every rank computes the same
schedule without communicating, a run's length in steps is known before it starts (`--epochs`), and a resumed run
continues from a saved (step, cursor) pair to exactly the batches an uninterrupted run would have drawn.

- The sample stream is the source in a fresh permutation per epoch (seeded by (seed, epoch)); global position p is
  sample `perm[p // N][p % N]`. A step's global batch is the next positions from the cursor, split into contiguous
  per-rank slices (rank 0 first), so one process with the combined batch sees exactly the same pairs.
- Bucketed (default): each step draws one max_num_patches from `seq_lens` (seeded by the step); the per-rank batch
  is `batch_size`, or `tokens_per_batch // (max_num_patches + text_tokens)`, so the token budget (and activation
  memory) per step stays flat across buckets; `text_tokens` (0 by default: a patch budget) charges each sample's
  caption, tokenized to a fixed length, against the budget too, so the text tower's share stays flat as well.
  stays flat across buckets.
- Mixed (`mixed=True`): each *sample* draws its own max_num_patches (seeded by its position) and ranks fill their
  token budgets greedily from the stream; packed execution never computes the padding, so a batch that mixes
  budgets costs only its tokens. Local batch sizes then differ between ranks, which the ring loss supports.

Webdataset shards are streamed (one loader worker per rank, shards split over ranks); their resume position is the
number of records the rank has consumed. Helpers not in `siglip2.data` live here: the mixed-budget collate (one
`naflex_collate` per budget, padded to the widest) and the batch sampler.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data import SampleError, decode_image, naflex_collate, shard_for_rank

TEXT_TOKENS = 64  # captions are padded / truncated to SigLIP2's 64 tokens (siglip2.data.naflex_collate)


@dataclass(frozen=True)
class BatchPlan:
    seq_lens: tuple
    world_size: int = 1
    batch_size: int | None = None  # per rank
    tokens_per_batch: int | None = None  # per rank, in max_num_patches units
    mixed: bool = False
    seed: int = 0
    text_tokens: int = 0  # tokens each sample's caption adds to tokens_per_batch (0: the budget counts patches only)

    def __post_init__(self):
        if not self.seq_lens or any(int(s) <= 0 for s in self.seq_lens):
            raise ValueError(f"seq_lens: expected positive patch budgets, got {self.seq_lens}")
        if (self.batch_size is None) == (self.tokens_per_batch is None):
            raise ValueError(
                "batch_size / tokens_per_batch: give exactly one (the per-rank batch size, or a "
                f"per-rank patch budget), got {self.batch_size} and {self.tokens_per_batch}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")
        if self.text_tokens < 0:
            raise ValueError(f"text_tokens: expected >= 0, got {self.text_tokens}")
        if self.tokens_per_batch is not None and self.tokens_per_batch < max(self.seq_lens) + self.text_tokens:
            raise ValueError(
                f"tokens_per_batch: must hold at least one sample of the largest budget "
                f"({max(self.seq_lens)} patches + {self.text_tokens} text tokens), got {self.tokens_per_batch}"
            )
        if self.mixed and self.tokens_per_batch is None:
            raise ValueError("mixed budgets need tokens_per_batch (the per-rank patch budget the samples fill)")

    def _budget(self) -> int:
        if self.tokens_per_batch is None:  # __post_init__ makes this unreachable; says so to the type checker too
            raise ValueError("tokens_per_batch: needed when batch_size is not given")
        return self.tokens_per_batch

    def step_len(self, step: int) -> int:
        """The max_num_patches of a bucketed step: the same on every rank (seeded by the step only)."""
        return self.seq_lens[random.Random(self.seed * 1_000_003 + step).randrange(len(self.seq_lens))]

    def sample_len(self, pos: int) -> int:
        """The max_num_patches of the sample at global position `pos` (mixed budgets)."""
        return self.seq_lens[random.Random(-(self.seed * 1_000_003 + pos) - 1).randrange(len(self.seq_lens))]

    def bucket_batch(self, m: int) -> int:
        """The per-rank batch size of a bucketed step of max_num_patches `m`."""
        return self.batch_size or self._budget() // (m + self.text_tokens)

    def step(self, step: int, cursor: int) -> tuple[list, int]:
        """Per-rank lists of (position, max_num_patches) for this step, and the cursor after it."""
        if not self.mixed:
            m = self.step_len(step)
            n = self.bucket_batch(m)
            ranks = [[(cursor + r * n + i, m) for i in range(n)] for r in range(self.world_size)]
            return ranks, cursor + self.world_size * n
        ranks, budget = [], self._budget()
        for _ in range(self.world_size):
            mine, used = [], 0
            while True:
                m = self.sample_len(cursor) + self.text_tokens
                if used + m > budget:
                    break
                mine.append((cursor, m - self.text_tokens))
                used, cursor = used + m, cursor + 1
            ranks.append(mine)
        return ranks, cursor

    def steps_for(self, num_positions: int) -> int:
        """Steps until `num_positions` samples have been drawn (a run of `--epochs`)."""
        step, cursor = 0, 0
        while cursor < num_positions:
            cursor = self.step(step, cursor)[1]
            step += 1
        return step

    def cursor_at(self, step: int) -> int:
        cursor = 0
        for s in range(step):
            cursor = self.step(s, cursor)[1]
        return cursor


class _Order:
    """Global position -> sample index: a fresh permutation of the source per epoch."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self._cache = n, seed, shuffle, {}

    def __call__(self, pos: int) -> int:
        epoch, i = divmod(pos, self.n)
        if not self.shuffle:
            return i
        if epoch not in self._cache:
            self._cache = {
                epoch: torch.randperm(
                    self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)
                ).tolist()
            }
        return self._cache[epoch][i]


class PlanSampler:
    """Batch sampler for a map-style source: yields this rank's [(index, max_num_patches, step, global_n), ...]."""

    def __init__(
        self,
        plan: BatchPlan,
        num_samples: int,
        rank: int,
        start_step: int,
        cursor: int,
        end_step: int,
        shuffle: bool = True,
    ):
        self.plan, self.rank, self.start, self.cursor, self.end = plan, rank, start_step, cursor, end_step
        self.order = _Order(num_samples, plan.seed, shuffle)

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):
        cursor = self.cursor
        for step in range(self.start, self.end):
            ranks, nxt = self.plan.step(step, cursor)
            g = sum(len(r) for r in ranks)
            yield [(self.order(p), m, step, g, nxt) for p, m in ranks[self.rank]]
            cursor = nxt


class CaptionedSamples(torch.utils.data.Dataset):
    """source[i] decoded at its NaFlex size for the requested budget; bad samples come back as SampleErrors."""

    def __init__(self, source, patch_size: int):
        self.source, self.patch_size = source, patch_size

    def __len__(self):
        return len(self.source)

    def __getitem__(self, item):
        idx, m, *meta = item
        rec = self.source[idx]
        return _decode(rec, self.patch_size, m), m, meta


def _decode(rec, patch_size, m):
    if rec.caption is None:
        return SampleError(rec.key, "no caption")
    try:
        return (rec.key, decode_image(rec, fast=(patch_size, m)), rec.caption)
    except SampleError as e:
        return e


class Collate:
    """Samples of possibly different budgets -> one batch: one naflex_collate per budget, padded to the widest,
    original order kept. Tokenization happens here, in the loader workers. Bad samples are dropped and counted."""

    def __init__(self, image_processor, tokenizer, text_kwargs=None):
        self.ip, self.tok, self.text_kwargs = image_processor, tokenizer, text_kwargs

    def __call__(self, items):
        (step, g, cursor) = items[0][2]
        good = [(s, m) for s, m, _ in items if not isinstance(s, SampleError)]
        skipped = [s for s, _, _ in items if isinstance(s, SampleError)]
        if not good:
            raise ValueError(
                f"step {step}: every sample of this rank's batch was unusable: "
                + "; ".join(str(e) for e in skipped[:3])
            )
        budgets = sorted({m for _, m in good})
        parts, order = [], []
        for m in budgets:
            idx = [i for i, (_, mm) in enumerate(good) if mm == m]
            parts.append(
                naflex_collate(
                    [good[i][0] for i in idx],
                    self.ip,
                    max_num_patches=m,
                    tokenizer=self.tok,
                    text_kwargs=self.text_kwargs,
                )
            )
            order += idx
        L = budgets[-1]
        batch = {}
        for k in ("pixel_values", "pixel_attention_mask"):
            batch[k] = torch.cat(
                [
                    torch.nn.functional.pad(
                        p[k], (0, 0, 0, L - p[k].shape[1]) if p[k].ndim == 3 else (0, L - p[k].shape[1])
                    )
                    for p in parts
                ]
            )
        for k in ("spatial_shapes", "input_ids", "attention_mask"):
            if k in parts[0]:
                batch[k] = torch.cat([p[k] for p in parts])
        inv = torch.tensor(order).argsort()
        batch = {k: v[inv] for k, v in batch.items()}
        batch.update(step=step, global_batch=g, cursor=cursor, skipped=[(e.key, e.reason) for e in skipped], budget=L)
        batch["cache_keys"] = [(s[0], m) for s, m in good]  # (sample key, its budget), in batch order
        return batch


class WebDatasetBatches(torch.utils.data.IterableDataset):
    """Streams this rank's shards (epochs reshuffle the shard order) and cuts them into the plan's batches."""

    def __init__(
        self,
        source,
        plan: BatchPlan,
        rank: int,
        start_step: int,
        cursor: int,
        end_step: int,
        consumed: int,
        patch_size: int,
        collate: Collate,
    ):
        self.source, self.plan, self.rank = source, plan, rank
        self.start, self.cursor, self.end, self.consumed = start_step, cursor, end_step, consumed
        self.P, self.collate = patch_size, collate
        shards = list(range(len(source.shards)))
        if len(shards) < plan.world_size:
            raise ValueError(f"data: {len(shards)} webdataset shards cannot be split over {plan.world_size} ranks")
        self.mine = shard_for_rank(shards, rank, plan.world_size)

    def _records(self):
        epoch = 0
        while True:
            order = list(self.mine)
            random.Random(self.plan.seed * 7919 + epoch).shuffle(order)
            n, errors = 0, []
            for i in order:
                for rec in self.source.iter_shard(i, on_error=errors.append):
                    n += 1
                    yield rec
            if n == 0:  # another pass would find nothing either: without this the stream spins forever
                names = ", ".join(self.source.shards[i] for i in self.mine[:3]) + (" ..." if len(self.mine) > 3 else "")
                why = f" (first problem: {errors[0].key}: {errors[0].reason})" if errors else ""
                raise ValueError(f"--data: no usable record (an image member and a caption) in {names}{why}")
            epoch += 1

    def __iter__(self):
        it, cursor, consumed = self._records(), self.cursor, self.consumed
        for _ in range(consumed):  # resume: skip what this rank already trained on
            next(it)
        for step in range(self.start, self.end):
            ranks, nxt = self.plan.step(step, cursor)
            g = sum(len(r) for r in ranks)
            mine = ranks[self.rank]
            consumed += len(mine)
            items = [(_decode(next(it), self.P, m), m, (step, g, nxt)) for _, m in mine]
            batch = self.collate(items)
            batch["consumed"] = consumed
            yield batch
            cursor = nxt
