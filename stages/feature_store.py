"""Embeddings of distinct inputs, kept in resumable shard files, and streamed feature files.

Posts repeat both images and texts, so featurize embeds each distinct input once: an `Items`
table lists the distinct values of one modality (first-occurrence order over the splits) and,
for every row, the index of its value. The table is cut into fixed shards of `shard_size`
values; each shard is embedded in fixed batches and saved as its own file, so:
- a killed run resumes from the last complete shard (a shard file is renamed into place only
  when complete, and carries a tag over the encoder fingerprint, the batch size and the
  content keys of its values, so a stale shard is never reused);
- N processes take every N-th shard, and each value is embedded in the same batch whatever
  N is, so the output does not depend on the number of processes;
- memory stays flat: feature files are written in row chunks from a few cached shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from stages.files import atomic_path

SAFETENSORS_DTYPES = {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}


@dataclass
class Items:
    """Distinct inputs of one modality, and for each split each row's index into them."""

    kind: str  # "text" | "image": names the shard files
    values: list[str]  # distinct texts, or one image path per distinct image content
    keys: list[str]  # content hash of each value
    rows: dict[str, np.ndarray]  # split -> int64 item index per row

    def shards(self, shard_size: int) -> list[range]:
        return [
            range(s, min(s + shard_size, len(self.values)))
            for s in range(0, len(self.values), shard_size)
        ]


def collect(
    kind: str, values_by_split: dict[str, list[str]], key_of: Callable[[str], str]
) -> Items:
    index: dict[str, int] = {}
    items = Items(kind, [], [], {})
    key_memo: dict[str, str] = {}  # an image path is hashed once however often it is used
    for split, values in values_by_split.items():
        rows = np.empty(len(values), np.int64)
        for i, value in enumerate(values):
            key = key_memo.get(value) or key_memo.setdefault(value, key_of(value))
            if key not in index:
                index[key] = len(items.values)
                items.values.append(value)
                items.keys.append(key)
            rows[i] = index[key]
        items.rows[split] = rows
    return items


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_key(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def shard_path(work_dir: Path, kind: str, k: int) -> Path:
    return work_dir / f"{kind}-{k:05d}.safetensors"


def shard_tag(items: Items, span: range, run_key: str) -> str:
    digest = hashlib.sha256(run_key.encode())
    for key in items.keys[span.start : span.stop]:
        digest.update(key.encode())
    return digest.hexdigest()


def shard_done(path: Path, tag: str) -> bool:
    if not path.exists():
        return False
    try:
        with safe_open(path, framework="numpy") as fh:
            return (fh.metadata() or {}).get("tag") == tag
    except SafetensorError:
        # Damaged (e.g. a crash before the renamed file's data reached the disk): embed again.
        return False


def save_shard(path: Path, embeddings: np.ndarray, tag: str) -> None:
    with atomic_path(path) as tmp:
        save_file(
            {"embedding": np.ascontiguousarray(embeddings, np.float32)}, tmp, metadata={"tag": tag}
        )


def pending_shards(
    items: Items, shard_size: int, run_key: str, work_dir: Path, rank: int, world: int
) -> list[tuple[Path, range, str]]:
    """(file, value range, tag) of this process's shards (every world-th) not yet on disk."""
    todo = []
    for k, span in enumerate(items.shards(shard_size)):
        path, tag = shard_path(work_dir, items.kind, k), shard_tag(items, span, run_key)
        if k % world == rank and not shard_done(path, tag):
            todo.append((path, span, tag))
    return todo


class ShardReader:
    """Rows of an item table from its shard files, with only a few shards in memory."""

    def __init__(self, work_dir: Path, kind: str, shard_size: int, dim: int) -> None:
        self.work_dir, self.kind, self.shard_size, self.dim = work_dir, kind, shard_size, dim
        self.shard = lru_cache(maxsize=4)(self._load)

    def _load(self, k: int) -> np.ndarray:
        return load_file(shard_path(self.work_dir, self.kind, k))["embedding"]

    def rows(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((len(index), self.dim), np.float32)
        shard_of = index // self.shard_size
        for k in np.unique(shard_of):
            hit = shard_of == k
            out[hit] = self.shard(int(k))[index[hit] % self.shard_size]
        return out


def write_safetensors(
    target: Path,
    shapes: dict[str, tuple[np.dtype, tuple[int, ...]]],
    chunks: Iterable[tuple[int, dict[str, np.ndarray]]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file whose tensors arrive as row chunks `(first_row, {name: rows})`.

    The header (shapes and offsets) is known up front, so each chunk is written in place and
    only one chunk is ever in memory. Refuses to finish a file with rows never written.
    """
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in shapes.items():
        size = np.dtype(dtype).itemsize * math.prod(shape)
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[np.dtype(dtype)],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8-byte alignment
    written = dict.fromkeys(shapes, 0)
    with atomic_path(target) as tmp:
        with tmp.open("wb") as fh:
            fh.write(struct.pack("<Q", len(blob)) + blob)
            base = fh.tell()
            fh.truncate(base + offset)
            for first_row, arrays in chunks:
                for name, rows in arrays.items():
                    dtype, shape = shapes[name]
                    rows = np.ascontiguousarray(rows, np.dtype(dtype).newbyteorder("<"))
                    row_bytes = rows.itemsize * math.prod(shape[1:])
                    fh.seek(base + header[name]["data_offsets"][0] + first_row * row_bytes)
                    fh.write(rows.tobytes())
                    written[name] += len(rows)
        missing = {n: shapes[n][1][0] - w for n, w in written.items() if w != shapes[n][1][0]}
        if missing:
            raise RuntimeError(f"{target}: rows not written as expected: {missing}")


def write_rows(
    target: Path,
    tables: dict[str, tuple[ShardReader, np.ndarray]],
    columns: dict[str, np.ndarray],
    chunk: int,
    metadata: dict[str, str],
) -> None:
    """A feature file: per row, the shard rows its item indices point to, plus plain columns."""
    n = len(next(iter(columns.values())))
    shapes = {name: (np.dtype("float32"), (n, reader.dim)) for name, (reader, _) in tables.items()}
    shapes |= {name: (values.dtype, values.shape) for name, values in columns.items()}
    chunks = (
        (
            s,
            {
                **{
                    name: reader.rows(index[s : s + chunk])
                    for name, (reader, index) in tables.items()
                },
                **{name: values[s : s + chunk] for name, values in columns.items()},
            },
        )
        for s in range(0, n, chunk)
    )
    write_safetensors(target, shapes, chunks, metadata)
