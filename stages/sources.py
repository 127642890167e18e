"""Reading the input tables named in `data.sources` into one kind of record.

Formats:
- `csv`: comma-separated with a header; columns `text`, `image_path`, `label` (or the source's
  `label_column`), optional `split` (train/dev/test) and `id` or `post_id` (the row id).
- `crisismmd`: the CrisisMMD v2.0 TSVs (tab-separated, no quoting); `image` is the image path,
  `image_id` the row id, `label` (8 values) or `label_text` (5) the label.
- `mediaeval`: MediaEval posts.txt / posts_groundtruth.txt / tweets.txt (tab-separated, no
  quoting, columns found by header name); comma-separated image ids are matched on file stem
  anywhere under `image_root`, the first id whose file decodes is used.

Every data row becomes a `Record`, also the broken ones (with an issue that drops them), so the
ledger can account for each line. Problems with the file itself raise `SourceError`.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.params import ParamsError
from stages.text import restore_undecodable

log = logging.getLogger(__name__)

FORMATS = ("csv", "crisismmd", "mediaeval")
SPLITS = {"train": "train", "dev": "val", "val": "val", "validation": "val", "test": "test"}
SOURCE_KEYS = {"name", "path", "format", "image_root", "label_map", "label_column", "split"}

# Default label maps (used when a source gives no `label_map`); entries whose class is not in
# `classes` are left out, and every class name also maps to itself.
DEFAULT_LABEL_MAPS: dict[str, dict[str, str]] = {
    "csv": {},
    "crisismmd": {
        "affected_individuals": "urgent_help",
        "injured_or_dead_people": "urgent_help",
        "missing_or_found_people": "urgent_help",
        "rescue_volunteering_or_donation_effort": "relief_info",
        "infrastructure_and_utility_damage": "relief_info",
        "vehicle_damage": "relief_info",
        "other_relevant_information": "relief_info",
        "not_humanitarian": "irrelevant",
    },
    "mediaeval": {"fake": "misinformation"},
}

# Column names per format: (text, image, row id); alternatives in order of preference.
_COLUMNS = {
    "csv": (("text",), ("image_path",), ("id", "post_id")),
    "crisismmd": (("tweet_text",), ("image",), ("image_id", "tweet_id")),
    "mediaeval": (
        ("post_text", "tweetText"),
        ("image_id(s)", "image_id", "imageId(s)"),
        ("post_id", "tweetId"),
    ),
}


class SourceError(ValueError):
    """An input file cannot be read as the table its source says it is."""


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    format: str
    image_root: Path
    label_map: dict[str, str]
    label_column: str = "label"
    split: str | None = None  # train / val / test for every row, or None


@dataclass
class Record:
    source: str
    row_id: str
    text: str
    images: tuple[str, ...]  # candidate paths under image_root, first usable one wins
    image_root: Path
    label: str | None  # class after the label map; None when unmapped
    split: str | None  # train / val / test from the source, None: prepare splits
    issues: list[str] = field(default_factory=list)  # drop/repair kinds found while reading
    event: str | None = None  # the disaster the post is about, when the source says


def parse_sources(entries: Sequence[Any], classes: Sequence[str]) -> list[Source]:
    """Validate the entries of `data.sources`; errors name the source and the key."""
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ParamsError("params.yaml: data.sources must be a non-empty list")
    sources, names = [], set()
    for i, entry in enumerate(entries):
        where = f"params.yaml: data.sources[{i}]"
        if not isinstance(entry, dict) or "path" not in entry:
            raise ParamsError(f"{where}: each source needs at least a 'path'")
        if unknown := set(entry) - SOURCE_KEYS:
            raise ParamsError(
                f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SOURCE_KEYS)}"
            )
        path = Path(str(entry["path"]))
        fmt = entry.get("format", "csv")
        if fmt not in FORMATS:
            raise ParamsError(f"{where} ({path}): format {fmt!r} is not one of {FORMATS}")
        name = str(entry.get("name") or path.stem)
        if name in names:
            raise ParamsError(f"{where}: source name {name!r} is used twice")
        names.add(name)
        split = entry.get("split")
        if split is not None and split not in SPLITS:
            raise ParamsError(f"{where} ({name}): split {split!r} is not one of {list(SPLITS)}")
        label_map = _label_map(entry.get("label_map"), fmt, classes, f"{where} ({name})")
        sources.append(
            Source(
                name,
                path,
                fmt,
                Path(str(entry.get("image_root", path.parent))),
                label_map,
                str(entry.get("label_column", "label")),
                SPLITS[split] if split else None,
            )
        )
    return sources


def _label_map(given: Any, fmt: str, classes: Sequence[str], where: str) -> dict[str, str]:
    if given is None:
        defaults = {k: v for k, v in DEFAULT_LABEL_MAPS[fmt].items() if v in classes}
        return defaults | {c: c for c in classes}
    if not isinstance(given, dict):
        raise ParamsError(f"{where}: label_map must be a mapping of source label -> class")
    if stray := sorted({str(v) for v in given.values()} - set(classes)):
        raise ParamsError(f"{where}: label_map targets {stray} are not in classes {classes}")
    return {str(k): str(v) for k, v in given.items()}


def _decode_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    for bom, codec in ((codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            try:
                return raw.decode(codec)
            except UnicodeDecodeError as exc:
                raise SourceError(f"{path}: starts with a UTF-16 mark but is not UTF-16") from exc
    # Undecodable bytes survive as lone surrogates; each field is then repaired on its own
    # (text.restore_undecodable), so one bad byte never costs the file or the row.
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    if not text.strip():
        raise SourceError(f"{path}: the file is empty (no header row)")
    return text


def _rows(path: Path, fmt: str) -> tuple[list[str], list[tuple[int, int, list[str]]]]:
    """Header and (first line, last line, fields) for each data row; [] for a blank one."""
    text = _decode_file(path)
    options: dict[str, Any] = (
        {"delimiter": ","} if fmt == "csv" else {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    )
    reader = csv.reader(io.StringIO(text, newline=""), **options)
    rows, header, start = [], None, 1
    limit = csv.field_size_limit()
    csv.field_size_limit(2**27)  # very long posts are cleaned, not a reason to fail
    try:
        for fields in reader:
            end = reader.line_num
            if header is None:
                header = [restore_undecodable(h)[0].strip() for h in fields]
            else:
                # Blank lines are data lines too: each gets a ledger row (dropped, blank_row).
                rows.append((start, end, fields if any(f.strip() for f in fields) else []))
            start = end + 1
    except csv.Error as exc:
        raise SourceError(f"{path}: line {reader.line_num}: not readable as {fmt}: {exc}") from exc
    finally:
        csv.field_size_limit(limit)
    if not header or not any(header):
        raise SourceError(f"{path}: no header row")
    if len(set(header)) != len(header):
        raise SourceError(f"{path}: repeated column names in the header {header}")
    return header, rows


def _pick(
    header: list[str], choices: tuple[str, ...], path: Path, fmt: str, required: bool = True
) -> int | None:
    for name in choices:
        if name in header:
            return header.index(name)
    if required:
        shown = ", ".join(repr(h[:40]) for h in header[:12])
        raise SourceError(
            f"{path}: missing column {' or '.join(map(repr, choices))} "
            f"for format {fmt!r} (found: {shown})"
        )
    return None


def _stem_index(root: Path) -> dict[str, str]:
    """File stem -> path relative to root, first in sorted walk order."""
    index: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            rel = (Path(folder) / name).relative_to(root)
            index.setdefault(Path(name).stem, rel.as_posix())
    return index


def read_source(source: Source) -> list[Record]:
    """Every data row of the source as a Record (broken rows carry the issue that drops them)."""
    path, fmt = source.path, source.format
    header, rows = _rows(path, fmt)
    text_choices, image_choices, id_choices = _COLUMNS[fmt]
    i_text = _pick(header, text_choices, path, fmt)
    i_image = _pick(header, image_choices, path, fmt)
    i_label = _pick(header, (source.label_column,), path, fmt)
    i_id = _pick(header, id_choices, path, fmt, required=fmt != "csv")
    i_split = _pick(header, ("split",), path, fmt, required=False) if fmt == "csv" else None
    i_event = _pick(header, ("event", "event_name"), path, fmt, required=False)
    stems = _stem_index(source.image_root) if fmt == "mediaeval" else {}
    records, seen_labels, seen_mapped = [], set(), False
    for number, (first, last, fields) in enumerate(rows, start=1):
        if not fields:
            records.append(
                Record(
                    source.name, str(number), "", (), source.image_root, None, None, ["blank_row"]
                )
            )
            continue
        if len(fields) != len(header):
            if last > first:
                raise SourceError(
                    f"{path}: lines {first}-{last}: an unclosed quote joins {last - first + 1} "
                    f"lines into one row of {len(fields)} fields (header has {len(header)})"
                )
            log.warning(
                "%s: line %d: %d fields, the header has %d; row dropped",
                path,
                first,
                len(fields),
                len(header),
            )
            records.append(
                Record(
                    source.name,
                    str(number),
                    "",
                    (),
                    source.image_root,
                    None,
                    None,
                    ["malformed_row"],
                )
            )
            continue
        issues = []
        values = []
        for value in fields:
            fixed, was_bad = restore_undecodable(value)
            values.append(fixed)
            if was_bad and "text_not_utf8" not in issues:
                issues.append("text_not_utf8")
        row_id = values[i_id].strip() if i_id is not None and values[i_id].strip() else str(number)
        raw_label = values[i_label].strip()
        label = source.label_map.get(raw_label)
        seen_labels.add(raw_label)
        if label is None:
            issues.append("label_unmapped")
        seen_mapped = seen_mapped or label is not None
        split = source.split
        if i_split is not None and values[i_split].strip():
            split = SPLITS.get(values[i_split].strip().lower())
            if split is None:
                issues.append("split_unknown")
        if fmt == "mediaeval":
            ids = [s.strip() for s in values[i_image].split(",") if s.strip()]
            images = tuple(stems.get(i, i) for i in ids)
            # MediaEval keeps each event's images in a folder named for it.
            folders = [Path(i).parts[0] for i in images if len(Path(i).parts) > 1]
            event = folders[0] if folders else None
        else:
            images = (values[i_image].strip(),)
            event = (values[i_event].strip() or None) if i_event is not None else None
        records.append(
            Record(
                source.name,
                row_id,
                values[i_text],
                images,
                source.image_root,
                label,
                split,
                issues,
                event,
            )
        )
    if records and not seen_mapped and seen_labels:
        raise SourceError(
            f"{path}: none of its labels {sorted(seen_labels)[:10]} maps to a class "
            f"in {list(dict.fromkeys(source.label_map.values()))}; set label_map "
            f"or classes in params.yaml"
        )
    return records
