"""Splitting and balancing for the prepare stage: grouped (no image on two sides), stratified
by class, seeded; plus the per-class subsets and the round-robin order of the `_100` files."""
from __future__ import annotations

import logging
import warnings
from collections import Counter
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

log = logging.getLogger(__name__)

BALANCE_MODES = ("downsample", "none")


def holdout(labels: Sequence[str], groups: Sequence[str], share: float, seed: int) -> np.ndarray:
    """Mask of rows held out: whole groups, about `share` of them (1 / round(1 / share) of the
    rows, one StratifiedGroupKFold fold), stratified by label as far as the groups allow."""
    labels, groups = np.asarray(labels, dtype=object), np.asarray(groups, dtype=object)
    n_groups = len(set(groups))
    if share <= 0 or n_groups < 2:
        return np.zeros(len(labels), dtype=bool)
    n_splits = max(2, min(round(1 / share), n_groups))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Rare classes (fewer groups than folds) are expected here; they warn on every split.
        warnings.simplefilter("ignore", UserWarning)
        _, held = next(folds.split(np.zeros(len(labels)), labels.astype(str), groups.astype(str)))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def assign_splits(labels: Sequence[str], groups: Sequence[str], fixed: Sequence[str | None],
                  test_size: float, val_size: float, seed: int) -> np.ndarray:
    """'train' / 'val' / 'test' per row. Rows whose source gave a split keep it; other rows of
    the same group follow them (so a group is never cut); the rest are split by groups, and
    if no source provides a validation split, it is carved from train the same way."""
    labels, groups = np.asarray(labels, dtype=object), np.asarray(groups, dtype=object)
    split = np.array([s if isinstance(s, str) else "" for s in fixed], dtype=object)
    by_group: dict[str, Counter] = {}
    for group, s in zip(groups, split):
        if s:
            by_group.setdefault(group, Counter())[s] += 1
    for i in np.flatnonzero(split == ""):
        if groups[i] in by_group:
            split[i] = by_group[groups[i]].most_common(1)[0][0]
    free = np.flatnonzero(split == "")
    if len(free):
        held = holdout(labels[free], groups[free], test_size, seed)
        split[free] = np.where(held, "test", "train")
    if not (split == "val").any():
        train = np.flatnonzero(split == "train")
        held = holdout(labels[train], groups[train], val_size, seed + 1)
        split[train[held]] = "val"
    return split.astype(str)


def balance(frame: pd.DataFrame, classes: Sequence[str], mode: str, seed: int) -> pd.DataFrame:
    """`downsample`: every class present cut (seeded) to the size of the smallest one."""
    if mode == "none" or frame.empty:
        return frame.sort_values("id")
    counts = frame["label"].value_counts()
    if absent := [c for c in classes if c not in counts.index]:
        log.warning("classes %s have no rows here; balancing the other classes", absent)
    smallest = int(counts.min())
    parts = [rows.sample(n=smallest, random_state=seed) for _, rows in frame.groupby("label")]
    return pd.concat(parts).sort_values("id")


def take_per_class(frame: pd.DataFrame, classes: Sequence[str], n: int, seed: int,
                   what: str) -> pd.DataFrame:
    """Up to `n` rows per class (seeded), all of a class that has fewer, with a warning."""
    counts = frame["label"].value_counts()
    if short := {c: int(counts.get(c, 0)) for c in classes if counts.get(c, 0) < n}:
        log.warning("%s: fewer than %d rows for %s; taking all there are", what, n, short)
    shuffled = frame.sample(frac=1.0, random_state=seed)
    return shuffled.groupby("label", sort=False).head(n).sort_values("id")


def interleave(frame: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Rows in round-robin class order (classes as listed), each class in id order."""
    order = {c: i for i, c in enumerate(classes)}
    ranked = frame.sort_values("id").assign(
        _rank=lambda f: f.groupby("label").cumcount(), _class=lambda f: f["label"].map(order))
    return ranked.sort_values(["_rank", "_class"]).drop(columns=["_rank", "_class"])
