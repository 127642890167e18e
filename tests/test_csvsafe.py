"""CSV outputs: no cell can start a spreadsheet formula, and reading undoes that exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from stages.csvsafe import escape_cell, read_csv, unescape_cell, write_csv


def test_formula_cells_are_neutralised_and_read_back(tmp_path: Path) -> None:
    texts = [
        '=HYPERLINK("http://x","click")',
        "+1+1",
        "-2",
        "@SUM(A1)",
        "'quoted",
        "''",
        "plain",
        "",
        "NA",
        "null",
        'a,b "c"\tand tab',
    ]
    frame = pd.DataFrame({"id": range(len(texts)), "text": texts, "label": ["=x"] * len(texts)})
    target = tmp_path / "out.csv"
    write_csv(frame, target)
    with target.open(encoding="utf-8", newline="") as fh:
        raw = list(csv.DictReader(fh))
    assert all(not row["text"].startswith(("=", "+", "-", "@")) for row in raw)
    assert raw[0]["text"].startswith("'=") and raw[0]["label"] == "'=x"
    back = read_csv(target)
    assert back["text"].tolist() == texts and back["id"].tolist() == list(range(len(texts)))
    assert back["id"].dtype == "int64"


@given(st.text())
def test_escape_round_trip(value: str) -> None:
    escaped = escape_cell(value)
    assert unescape_cell(escaped) == value
    assert not escaped.startswith(("=", "+", "-", "@", "\t", "\r"))
