"""Accounting for the prepare stage: the fate of every input row and the counts in
`reports/prepare.json`. Rows in = kept + repaired + dropped, by construction and by test."""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import pandas as pd

from stages.images import ImageStore

# Kinds that remove a row from every output; any other kind is a repair.
DROPS = ("malformed_row", "label_unmapped", "split_unknown", "empty_post", "duplicate",
         "duplicate_conflict", "downsampled")
FATES = ("kept", "repaired", "dropped")
LEDGER_COLUMNS = ["ledger_id", "source", "row_id", "fate", "reason"]


def is_dropped(kinds: Iterable[str]) -> bool:
    return any(k in DROPS for k in kinds)


def fate(kinds: list[str]) -> str:
    return "dropped" if is_dropped(kinds) else "repaired" if kinds else "kept"


def ledger(table: pd.DataFrame) -> pd.DataFrame:
    """One line per input row: ledger_id, source, row_id, fate, reason (';'-joined kinds)."""
    return pd.DataFrame({
        "ledger_id": table["id"], "source": table["source"], "row_id": table["row_id"],
        "fate": table["kinds"].map(fate), "reason": table["kinds"].map(_reason)})


def _reason(kinds: list[str]) -> str:
    """The kinds met, the one that dropped the row first."""
    return ";".join(sorted(kinds, key=lambda kind: kind not in DROPS))


def _per_class(frame: pd.DataFrame, classes: list[str]) -> dict[str, int]:
    counts = frame["label"].value_counts()
    return {c: int(counts.get(c, 0)) for c in classes} | {"total": len(frame)}


def _fates(table: pd.DataFrame) -> dict[str, int]:
    counts = table["kinds"].map(fate).value_counts()
    return {"in": len(table)} | {f: int(counts.get(f, 0)) for f in FATES}


def summary(table: pd.DataFrame, live: pd.DataFrame, outputs: dict[str, pd.DataFrame],
            classes: list[str], store: ImageStore, written: dict[str, int]) -> dict:
    """Counts for reports/prepare.json (DVC metrics): rows by fate and source, each repair and
    drop kind (rows), cleaning steps (rows changed), images, classes per split and output."""
    kinds = Counter(k for ks in table["kinds"] for k in ks)
    distinct = store.distinct().values()
    groups = {s: set(live.loc[live["split"] == s, "group"]) for s in ("train", "val", "test")}
    shared = (groups["train"] | groups["val"]) & groups["test"]
    return {
        "rows": _fates(table),
        "sources": {name: _fates(rows) for name, rows in table.groupby("source", sort=False)},
        "repairs": {k: n for k, n in sorted(kinds.items()) if k not in DROPS},
        "drops": {k: kinds.get(k, 0) for k in DROPS},
        "cleaning": dict(sorted(Counter(s for ss in table["cleaning"] for s in ss).items())),
        "images": {
            "files_looked_up": len(distinct),
            "files_usable": sum(1 for s in distinct if s.problem is None),
            "files_unusable": dict(Counter(s.problem for s in distinct if s.problem)),
            "normalised": dict(sorted(Counter(n for s in distinct for n in s.notes).items())),
            "written": written,
        },
        "splits": {s: _per_class(live[live["split"] == s], classes)
                   for s in ("train", "val", "test")}
        | {name: _per_class(frame, classes) for name, frame in outputs.items()},
        "groups": {s: len(g) for s, g in groups.items()} | {"shared_with_test": len(shared)},
    }
