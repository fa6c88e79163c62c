"""Sources of records: a folder, a path list, a CSV / TSV / JSONL table (map-style `FileSource`), or webdataset
tar shards (`WebDatasetSource`); `open_source` picks one for an input. A `Record` is one sample (key, image path
or bytes, optional caption); a `SampleError` is a sample that cannot be used. The API: siglip2/data/__init__.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

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
        seen: set[str] = set()
        for sample in ds:
            key = f"{name}/{sample['__key__']}"
            if key in seen:
                # keys must be unique: the first sample keeps the key, a later one is an error, never a duplicate row
                report(SampleError(key, "repeated sample key in the tar (the first sample with it is kept)"))
                continue
            seen.add(key)
            img = next((sample[m] for m in WDS_IMAGE_MEMBERS if m in sample), None)
            if img is None:
                members = sorted(k for k in sample if not k.startswith("__"))
                report(SampleError(key, f"no image member (has {members})"))
                continue
            cap = sample.get(self.text_member)
            if cap is not None:
                try:
                    cap = bytes(cap).decode("utf-8")
                except UnicodeDecodeError as e:  # replacement characters would be embedded as if they were text
                    report(SampleError(key, f"{self.text_member} member is not valid UTF-8 ({e.reason} at {e.start})"))
                    continue
            yield Record(key, bytes(img), cap)
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
        files = _walk_files(s)
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


def _walk_files(top: str) -> list[str]:
    """Every file under `top`, following directory symlinks but each real directory once: a link to an ancestor
    (`ln -s . d/self`) would otherwise list the same files again on every level, or forever with two such links."""
    seen: set[tuple[int, int]] = set()
    files = []
    for root, dirs, names in os.walk(top, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        files.extend(os.path.join(root, n) for n in names)
    return files


def _read_text(path: str) -> str:
    """A text input file, UTF-8 with or without a BOM (spreadsheet exports add one); invalid UTF-8 is a ValueError
    naming the file and the line."""
    with open(path, "rb") as f:
        raw = f.read()
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"input: {path}:{line} is not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _resolve(base: str, p: str) -> str:
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.join(base, p)


def _list_source(path: str) -> FileSource:
    base = os.path.dirname(os.path.abspath(path))
    lines = [line.strip() for line in re.split(r"\r\n|\r|\n", _read_text(path))]
    recs = [Record(line, _resolve(base, line)) for line in lines if line and not line.startswith("#")]
    if not recs:
        raise ValueError(f"input: {path!r} lists no paths")
    return FileSource(recs, description=path)


def _table_source(path: str, ext: str, image_column: str, text_column: str | None) -> FileSource:
    base = os.path.dirname(os.path.abspath(path))
    rows: list[dict] = []
    if ext == ".jsonl":
        for n, line in enumerate(_read_text(path).split("\n"), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"input: {path}:{n} is not valid JSON ({e})") from e
                if not isinstance(rows[-1], dict):
                    raise ValueError(f"input: {path}:{n}: expected a JSON object per line")
    else:
        reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter="\t" if ext == ".tsv" else ",")
        try:
            for r in reader:
                if None in r:  # DictReader's key for the fields past the header's
                    raise ValueError(
                        f"input: {path}:{reader.line_num}: {len(reader.fieldnames or []) + len(r[None])} fields "
                        f"for {len(reader.fieldnames or [])} columns (a comma in an unquoted field?)"
                    )
                rows.append(r)
        except csv.Error as e:
            raise ValueError(f"input: {path}:{reader.line_num}: {e}") from None
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
        if isinstance(cap, (bool, dict, list)):  # str() of these would be embedded as if it were the caption
            raise ValueError(f"input: {path!r} row {n}: column {text_col!r} is a {type(cap).__name__}, not text")
        recs.append(Record(ref, _resolve(base, ref), None if cap is None else str(cap)))
    return FileSource(recs, description=path)
