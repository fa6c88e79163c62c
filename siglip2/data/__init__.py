"""Streaming NaFlex data: sources of records, decoding, NaFlex collate, rank sharding, token batching.

The API is documented in siglip2/data/sources.py.
"""

from .sources import (
    CAPTION_COLUMNS,
    IMAGE_EXTENSIONS,
    WDS_IMAGE_MEMBERS,
    FileSource,
    Record,
    SampleError,
    WebDatasetSource,
    decode_image,
    iter_token_batches,
    naflex_collate,
    num_patches,
    open_source,
    pack_by_tokens,
    rank_slice,
    shard_for_rank,
    world_info,
)

__all__ = [
    "CAPTION_COLUMNS",
    "IMAGE_EXTENSIONS",
    "WDS_IMAGE_MEMBERS",
    "FileSource",
    "Record",
    "SampleError",
    "WebDatasetSource",
    "decode_image",
    "iter_token_batches",
    "naflex_collate",
    "num_patches",
    "open_source",
    "pack_by_tokens",
    "rank_slice",
    "shard_for_rank",
    "world_info",
]
