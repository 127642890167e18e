"""Which posts must stay on one side of a split: connected components over the relations
"same or near-duplicate image" (perceptual difference hash within a Hamming distance) and
"same normalised text of at least `min_words` words" (retweets, copies with another picture),
plus "same event" when whole events are held out.

The white dummy is not an image and never links posts; short texts ("#sandy", "wow") are
shared by unrelated posts and would chain them into one giant group, so they never link
either. imagehash's dhash is used (not a hand-written one) because it is the well-kept
implementation of the 16x16 difference hash the leakage audit was measured with.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import pandas as pd

HASH_SIZE = 16  # 16x16 difference hash: 256 bits
_URL = re.compile(r"(?:https?:\S*|www\.\S+|pic\.twitter\.com/\S*)", re.IGNORECASE)
_MENTION = re.compile(r"@\w+")
_LEADING_RT = re.compile(r"^(?:rt\b\s*:?\s*)+")
_NOT_WORD = re.compile(r"[\W_]+")


def normalise_text(text: str) -> str:
    """Lower case, no URLs, @mentions, leading RT or punctuation: what a retweet or a copy
    of a post shares with its original."""
    text = _MENTION.sub(" ", _URL.sub(" ", text.lower()))
    text = _NOT_WORD.sub(" ", text).strip()
    return _LEADING_RT.sub("", text).strip()


def image_hash(path: Path) -> np.ndarray:
    """The 256-bit difference hash of an image file, as a boolean vector."""
    import imagehash  # with scipy and PyWavelets: ~0.5 s to import, needed by prepare only

    with Image.open(path) as im:
        return np.asarray(imagehash.dhash(im, hash_size=HASH_SIZE).hash, dtype=bool).ravel()


def near_pairs(hashes: np.ndarray, max_bits: int, chunk: int = 2048) -> list[tuple[int, int]]:
    """Index pairs (i < j) of hashes within `max_bits` Hamming distance. A matrix product of
    +-1 vectors gives all distances at once (d = (bits - dot) / 2), in chunks to bound memory."""
    n = len(hashes)
    if n < 2:
        return []
    signs = np.where(hashes, 1.0, -1.0).astype(np.float32)
    bits = signs.shape[1]
    pairs = []
    for start in range(0, n, chunk):
        block = signs[start : start + chunk]
        dist = (bits - block @ signs.T) / 2
        rows, cols = np.nonzero(dist <= max_bits + 0.5)
        rows += start
        keep = rows < cols
        pairs += zip(rows[keep].tolist(), cols[keep].tolist())
    return pairs


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> bool:
        a, b = self.find(i), self.find(j)
        if a == b:
            return False
        self.parent[max(a, b)] = min(a, b)
        return True


@dataclass
class Grouping:
    group: list[str]  # group label per row
    merged: dict[str, int] = field(default_factory=dict)  # unions that joined groups, per relation
    largest: int = 0
    count: int = 0


def group_rows(
    digests: Sequence[str],
    texts: Sequence[str],
    events: Sequence[str | None],
    dummy: str,
    hashes: dict[str, np.ndarray],
    max_bits: int,
    min_words: int,
    by_event: bool,
) -> Grouping:
    """Connected components over the relations in the module docstring. `hashes` maps each
    image digest (but the dummy) to its difference hash; max_bits < 0 turns off near matching."""
    n = len(digests)
    uf = _UnionFind(n)
    merged: Counter[str] = Counter()

    def link(members: Iterable[list[int]], relation: str) -> None:
        for rows in members:
            for other in rows[1:]:
                merged[relation] += uf.union(rows[0], other)

    by_digest: dict[str, list[int]] = {}
    for i, digest in enumerate(digests):
        if digest != dummy:
            by_digest.setdefault(digest, []).append(i)
    link(by_digest.values(), "same_image")
    distinct = sorted(d for d in by_digest if d in hashes)
    if max_bits >= 0 and distinct:
        matrix = np.array([hashes[d] for d in distinct])
        link(
            (
                [by_digest[distinct[a]][0], by_digest[distinct[b]][0]]
                for a, b in near_pairs(matrix, max_bits)
            ),
            "near_duplicate_image",
        )
    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        norm = normalise_text(text)
        if len(norm.split()) >= min_words:
            by_text.setdefault(norm, []).append(i)
    link(by_text.values(), "same_text")
    if by_event:
        by_name: dict[str, list[int]] = {}
        for i, event in enumerate(events):
            if event:
                by_name.setdefault(event, []).append(i)
        link(by_name.values(), "same_event")
    roots = [uf.find(i) for i in range(n)]
    sizes = Counter(roots)
    return Grouping(
        [f"g{r}" for r in roots], dict(merged), max(sizes.values(), default=0), len(sizes)
    )


def audit(
    rows: pd.DataFrame, hashes: dict[str, np.ndarray], max_bits: int, min_words: int
) -> dict[str, int]:
    """What still crosses the split after grouping (0 unless a source's fixed split was kept
    with `split_leaks: keep`): image pairs within `max_bits` (same image included) and
    normalised texts of at least `min_words` words found in two of train/val/test."""
    sides: dict[str, set[str]] = {}
    for digest, split in zip(rows["digest"], rows["split"]):
        if digest in hashes:
            sides.setdefault(digest, set()).add(split)
    distinct = sorted(sides)
    crossing = sum(len(s) > 1 for s in sides.values())
    if max_bits >= 0 and distinct:
        matrix = np.array([hashes[d] for d in distinct])
        crossing += sum(
            sides[distinct[a]] != sides[distinct[b]] or len(sides[distinct[a]]) > 1
            for a, b in near_pairs(matrix, max_bits)
        )
    texts: dict[str, set[str]] = {}
    for text, split in zip(rows["text"], rows["split"]):
        norm = normalise_text(text)
        if len(norm.split()) >= min_words:
            texts.setdefault(norm, set()).add(split)
    return {"image_pairs": int(crossing), "texts": sum(len(s) > 1 for s in texts.values())}
