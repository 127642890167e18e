"""Which training posts must share a cross-validation fold: prepare's grouping relations (same
or near-duplicate image, same normalised text; stages/groups.py) recomputed over train + val.

Without them a held-out fold scores copies of posts its model trained on: on a 400-post draw
from crisis4 + CrisisMMD the out-of-fold macro-F1 read 0.87 while disjoint test posts scored
0.39, and the epoch count it chose overfitted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages import csvsafe, groups
from stages.images import encode_jpeg, white_image

SPLIT_FILES = ("train_balanced.csv", "val.csv")  # the rows train's features come from


def training_groups(
    dataset: Path, ids: np.ndarray, dummy_size: int, max_bits: int, min_words: int
) -> np.ndarray:
    """One group label per id in `ids` (train then val feature rows), from the split CSVs and
    the stored images under `dataset`."""
    frames = [csvsafe.read_csv(Path(dataset) / name, int_columns=("id",)) for name in SPLIT_FILES]
    rows = {
        int(i): (text, path)
        for frame in frames
        for i, text, path in zip(frame["id"], frame["text"], frame["image_path"])
    }
    missing = [int(i) for i in ids if int(i) not in rows]
    if missing:
        raise ValueError(
            f"{dataset}: {len(missing)} feature ids are in neither "
            f"{' nor '.join(SPLIT_FILES)} (first {missing[:5]}); re-run featurize"
        )
    texts = [rows[int(i)][0] for i in ids]
    paths = [rows[int(i)][1] for i in ids]
    digests = [Path(p).stem for p in paths]  # prepare names each stored image by its SHA-256
    dummy = encode_jpeg(white_image(dummy_size))[0]
    hashes = (
        {
            d: groups.image_hash(Path(dataset) / p)
            for d, p in dict(zip(digests, paths)).items()
            if d != dummy
        }
        if max_bits >= 0
        else {}
    )
    found = groups.group_rows(
        digests, texts, [None] * len(ids), dummy, hashes, max_bits, min_words, by_event=False
    )
    return np.asarray(found.group)
