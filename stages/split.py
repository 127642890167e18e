"""The split of the prepare stage: posts grouped (no group of stages.groups on two sides) and
split stratified by class to the requested shares, seeded; balancing, the per-class subsets and
the round-robin order of the `_100` files; `split_rows` runs it all on prepare's table."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from stages import config, ledger
from stages import groups as groups_
from stages.images import ImageStore

log = logging.getLogger(__name__)

BALANCE_MODES = ("downsample", "none")
LEAK_MODES = ("drop", "keep")


SPLIT_ORDER = ("train", "val", "test")


def holdout(
    labels: Sequence[str], groups: Sequence[str], share: float, seed: int, tries: int = 64
) -> np.ndarray:
    """Mask of rows held out: whole groups, as close to `share` of the rows of every class as
    the groups allow (any share in (0, 1), not rounded to 1/k folds).

    Groups are visited in a seeded random order and one is taken when it brings the held-out
    class counts closer to their targets, then single groups are toggled while that helps.
    The first order whose result is within tolerance (all rows within 1%, each class within
    2% of its rows or 2 posts) is used, else the closest of `tries`. When a few groups hold
    most rows (crisis4: one picture has 953 posts, one group 1,977), a held-out side that
    meets the share can only take few of them, so it holds more distinct, less shared
    pictures than a random fold would (crisis4 test: 106 misinformation pictures for 1,418
    posts, vs 39 for 1,416 with the former 1/k StratifiedGroupKFold fold). That is the price
    of exact shares; docs/RESULTS.md reports it.
    """
    labels, groups = np.asarray(labels, dtype=object), np.asarray(groups, dtype=object)
    if share <= 0 or len(labels) == 0:
        return np.zeros(len(labels), dtype=bool)
    group_ids, row_group = np.unique(groups.astype(str), return_inverse=True)
    _, row_class = np.unique(labels.astype(str), return_inverse=True)
    counts = np.zeros((len(group_ids), row_class.max() + 1))
    np.add.at(counts, (row_group, row_class), 1)
    totals = counts.sum(axis=0)
    target = share * totals
    slack = np.maximum(2.0, 0.02 * totals)
    rng = np.random.default_rng(seed)
    best, best_cost = np.zeros(len(group_ids), dtype=bool), np.inf
    for _ in range(max(tries, 1)):
        taken, cost = _greedy(counts, target, rng.permutation(len(group_ids)))
        have = counts[taken].sum(axis=0)
        if (
            abs(have.sum() - target.sum()) <= 0.01 * totals.sum()
            and (np.abs(have - target) <= slack).all()
        ):
            return taken[row_group]
        if cost < best_cost:
            best, best_cost = taken, cost
    return best[row_group]


def _greedy(counts: np.ndarray, target: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, float]:
    taken, have = np.zeros(len(counts), dtype=bool), np.zeros(counts.shape[1])
    cost = float(((have - target) ** 2).sum())
    for _sweep in range(2):  # the second sweep only toggles what the first pass got wrong
        changed = False
        for g in order:
            new = have - counts[g] if taken[g] else have + counts[g]
            new_cost = float(((new - target) ** 2).sum())
            if new_cost < cost:
                have, cost, taken[g], changed = new, new_cost, not taken[g], True
        if not changed:
            break
    return taken, cost


def assign_splits(
    labels: Sequence[str],
    groups: Sequence[str],
    fixed: Sequence[str | None],
    test_size: float,
    val_size: float,
    seed: int,
    leaks: str = "drop",
    held: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """'train' / 'val' / 'test' per row, and a mask of rows dropped as `split_leak`.

    Rows whose source gave a split keep it, and other rows of their group follow them. A
    group whose rows carry different given splits would leak: with leaks='drop' its rows on
    the later side (train < val < test) are dropped, so evaluation never sees a copy of a
    training post; with 'keep' they stay (and are counted). The remaining groups are split
    by `holdout`; validation is carved from train the same way when no source gives one.

    `held` (a mask of rows of held-out events) replaces the sources' splits: those rows are
    the test split, and rows of other events in their groups are dropped as leaks."""
    labels, groups = np.asarray(labels, dtype=object), np.asarray(groups, dtype=object)
    if held is not None:
        fixed, test_size = np.where(held, "test", None), 0.0
    split = np.array([s if isinstance(s, str) else "" for s in fixed], dtype=object)
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    first: dict[str, str] = {}
    for group, s in zip(groups, split):
        if s and (group not in first or rank[s] < rank[first[group]]):
            first[group] = s
    leaked = np.array([bool(s) and s != first[g] for g, s in zip(groups, split)], dtype=bool)
    if leaks == "keep":
        leaked[:] = False
    for i in np.flatnonzero(split == ""):
        split[i] = first.get(groups[i], "")
    free = np.flatnonzero(split == "")
    if len(free):
        to_test = holdout(labels[free], groups[free], test_size, seed)
        split[free] = np.where(to_test, "test", "train")
    if not (split == "val").any():
        train = np.flatnonzero(split == "train")
        carved = holdout(labels[train], groups[train], val_size, seed + 1)
        split[train[carved]] = "val"
    if held is not None:  # posts of other events linked to a held-out one would leak
        leaked |= (split == "test") & ~held
    return split.astype(str), leaked


def outputs(
    live: pd.DataFrame, classes: Sequence[str], mode: str, per_class: int, seed: int
) -> dict[str, pd.DataFrame]:
    """The output tables by file stem: balanced train and test, val as it is, the per-class
    `_100` subsets and the round-robin order of the small training file."""
    part = {s: live[live["split"] == s] for s in SPLIT_ORDER}
    out = {
        "train_balanced": balance(part["train"], classes, mode, seed),
        "val": part["val"].sort_values("id"),
        "test_balanced": balance(part["test"], classes, mode, seed),
    }
    for name in ("train_balanced", "test_balanced"):
        out[f"{name}_100"] = take_per_class(out[name], classes, per_class, seed, name)
    out["train_balanced_100_interleaved"] = interleave(out["train_balanced_100"], classes)
    return out


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


def take_per_class(
    frame: pd.DataFrame, classes: Sequence[str], n: int, seed: int, what: str
) -> pd.DataFrame:
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
        _rank=lambda f: f.groupby("label").cumcount(), _class=lambda f: f["label"].map(order)
    )
    return ranked.sort_values(["_rank", "_class"]).drop(columns=["_rank", "_class"])


def shares(rows: pd.DataFrame, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Achieved share of the rows (and of each class's rows) in each split, before balancing."""

    def of(frame: pd.DataFrame) -> dict[str, float]:
        counts = frame["split"].value_counts()
        return {s: round(int(counts.get(s, 0)) / max(len(frame), 1), 4) for s in SPLIT_ORDER}

    return {"all": of(rows)} | {c: of(rows[rows["label"] == c]) for c in classes}


class PrepareError(ValueError):
    """The inputs leave too little to fill train, validation and test."""


def split_rows(
    table: pd.DataFrame, classes: list[str], cfg: config.PrepareConfig, store: ImageStore
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, Any]]:
    """Surviving rows with their split and image_path, the output tables by file stem, and
    the grouping report. Marks rows dropped by the split or by balancing in `table`."""
    live = table[~table["kinds"].map(ledger.is_dropped)].copy()
    if live.empty:
        raise PrepareError("no rows left after reading and cleaning (see the ledger)")
    seed = cfg.seed
    hashes = {
        d: groups_.image_hash(store.staging / f"{d}.jpg")
        for d in sorted(set(live["digest"]) - {store.dummy})
    }
    groups = groups_.group_rows(
        live["digest"].tolist(),
        live["text"].tolist(),
        live["event"].tolist(),
        store.dummy,
        hashes,
        cfg.near_duplicate_bits,
        cfg.min_shared_words,
        cfg.group_by == "event",
    )
    live["group"] = groups.group
    held = live["event"].isin(cfg.test_events).to_numpy() if cfg.test_events else None
    split, leaked = assign_splits(
        live["label"],
        live["group"],
        live["split"],
        cfg.test_size,
        cfg.val_size,
        seed,
        cfg.split_leaks,
        held,
    )
    live["split"] = split
    _mark(table, live.loc[leaked, "id"], "split_leak")
    live = live[~leaked]
    folder = np.where(live["split"] == "test", "images_test/", "images_train/")
    live["image_path"] = folder + live["digest"] + ".jpg"
    out = outputs(live, classes, cfg.balance, cfg.per_class_small, seed)
    if empty := [name for name, frame in out.items() if frame.empty]:
        raise PrepareError(
            f"{', '.join(empty)} would be empty: {len(live)} rows in "
            f"{live['group'].nunique()} groups are too few to split"
        )
    used = pd.concat([out[name]["id"] for name in ("train_balanced", "val", "test_balanced")])
    _mark(table, live.loc[~live["id"].isin(used), "id"], "downsampled")
    audit = groups_.audit(live, hashes, cfg.near_duplicate_bits, cfg.min_shared_words)
    return (
        live,
        out,
        {
            "count": groups.count,
            "largest": groups.largest,
            "merged_by": groups.merged,
            "shares": shares(live, classes),
            "across_splits": audit,
        },
    )


def _mark(table: pd.DataFrame, ids: pd.Series, kind: str) -> None:
    rows = table["id"].isin(ids)
    table.loc[rows, "kinds"] = table.loc[rows, "kinds"].map(lambda k: k + [kind])
