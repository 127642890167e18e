"""Accounting for the prepare stage: the fate of every input row and the counts in
`reports/prepare.json`. Each data line of each source has one ledger row with one fate and
one primary reason, and every count in the summary is computed from the ledger itself, so
rows in = kept + repaired + dropped and the drop reasons add up to the dropped rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pandas as pd

from stages.images import ImageStore

# Kinds that remove a row from every output, in the order that picks a row's primary reason
# (what was found first while reading wins over what the split did later); any other kind
# is a repair.
DROPS = (
    "blank_row",
    "malformed_row",
    "label_unmapped",
    "split_unknown",
    "empty_post",
    "duplicate",
    "duplicate_conflict",
    "split_leak",
    "downsampled",
)
FATES = ("kept", "repaired", "dropped")
LEDGER_COLUMNS = ["ledger_id", "source", "row_id", "fate", "reason", "details"]


def is_dropped(kinds: Iterable[str]) -> bool:
    return any(k in DROPS for k in kinds)


def fate(kinds: list[str]) -> str:
    return "dropped" if is_dropped(kinds) else "repaired" if kinds else "kept"


def reason(kinds: list[str]) -> str:
    """The one primary reason: the first drop kind in DROPS order, else the first repair."""
    drops = [k for k in DROPS if k in kinds]
    return drops[0] if drops else (kinds[0] if kinds else "")


def ledger(table: pd.DataFrame) -> pd.DataFrame:
    """One line per input row: ledger_id, source, row_id, fate, reason (primary) and details
    (every kind met, ';'-joined, drops first)."""
    return pd.DataFrame(
        {
            "ledger_id": table["id"],
            "source": table["source"],
            "row_id": table["row_id"],
            "fate": table["kinds"].map(fate),
            "reason": table["kinds"].map(reason),
            "details": table["kinds"].map(_details),
        }
    )


def _details(kinds: list[str]) -> str:
    return ";".join(sorted(dict.fromkeys(kinds), key=lambda kind: kind not in DROPS))


def _per_class(frame: pd.DataFrame, classes: list[str]) -> dict[str, int]:
    counts = frame["label"].value_counts()
    return {c: int(counts.get(c, 0)) for c in classes} | {"total": len(frame)}


def _fates(rows: pd.DataFrame) -> dict[str, int]:
    counts = rows["fate"].value_counts()
    return {"in": len(rows)} | {f: int(counts.get(f, 0)) for f in FATES}


def counts(lines: pd.DataFrame) -> dict:
    """Fates (all rows and per source), primary drop reasons, and repairs on the rows that
    are kept: all computed from the ledger lines, so they always add up."""
    alive = lines[lines["fate"] != "dropped"]
    repairs = Counter(k for d in alive["details"] for k in d.split(";") if k)
    dropped = lines.loc[lines["fate"] == "dropped", "reason"].value_counts()
    return {
        "rows": _fates(lines),
        "sources": {name: _fates(rows) for name, rows in lines.groupby("source", sort=False)},
        "repairs": dict(sorted(repairs.items())),
        "drops": {k: int(dropped.get(k, 0)) for k in DROPS},
    }


def summary(
    table: pd.DataFrame,
    lines: pd.DataFrame,
    live: pd.DataFrame,
    outputs: dict[str, pd.DataFrame],
    classes: list[str],
    store: ImageStore,
    written: dict[str, int],
) -> dict:
    """reports/prepare.json (DVC metrics): the ledger's counts, cleaning steps (rows changed),
    images, and classes per split and per output file."""
    distinct = store.distinct().values()
    return counts(lines) | {
        "cleaning": dict(sorted(Counter(s for ss in table["cleaning"] for s in ss).items())),
        "images": {
            "files_looked_up": len(distinct),
            "files_usable": sum(1 for s in distinct if s.problem is None),
            "files_unusable": dict(Counter(s.problem for s in distinct if s.problem)),
            "normalised": dict(sorted(Counter(n for s in distinct for n in s.notes).items())),
            "written": written,
        },
        "splits": {
            s: _per_class(live[live["split"] == s], classes) for s in ("train", "val", "test")
        }
        | {name: _per_class(frame, classes) for name, frame in outputs.items()},
    }
