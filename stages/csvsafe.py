"""CSV files that a spreadsheet cannot turn into formulas, and that read back exactly.

A cell beginning with `=`, `+`, `-`, `@` (or tab / carriage return) runs as a formula when the
file is opened in a spreadsheet (CSV injection). `write_csv` prefixes such cells with `'`, the
usual neutraliser; `read_csv` removes exactly that prefix again, so pipeline stages get the
original strings back. Stages that read a CSV written here must use `read_csv`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from stages.files import atomic_path

_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"


def escape_cell(value: str) -> str:
    """`'` before a formula trigger, and before an existing leading `'`, so that
    `unescape_cell` can always undo it."""
    if value.startswith(_TRIGGERS) or value.startswith(_QUOTE):
        return _QUOTE + value
    return value


def unescape_cell(value: str) -> str:
    if value.startswith(_QUOTE) and value[1:2] and value[1:].startswith(_TRIGGERS + (_QUOTE,)):
        return value[1:]
    return value


def write_csv(frame: pd.DataFrame, target: Path) -> None:
    """Write `frame` (no index) with every text cell escaped, atomically."""
    safe = frame.copy()
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(lambda v: escape_cell(v) if isinstance(v, str) else v)
    with atomic_path(Path(target)) as tmp:
        safe.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")


def read_csv(source: Path, int_columns: Iterable[str] = ("id", "ledger_id")) -> pd.DataFrame:
    """Read a CSV written by `write_csv`: all cells as strings (no NaN for empty or "NA"
    texts), escapes undone, and the named integer columns converted when present."""
    frame = pd.read_csv(source, dtype=str, keep_default_na=False, na_filter=False)
    for column in frame.columns:
        frame[column] = frame[column].map(unescape_cell)
    for column in int_columns:
        if column in frame.columns:
            frame[column] = frame[column].astype("int64")
    return frame
