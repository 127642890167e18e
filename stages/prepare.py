"""Prepare stage: read the sources, clean texts, normalise images (white dummy when unusable),
drop duplicates, group posts that must not be split (same or near-duplicate image, same
text, optionally same event), split by groups, balance, and account for every input row."""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from stages import config, csvsafe, ledger, tracking
from stages import split as splitting
from stages.files import write_json
from stages.images import ImageDecodeError, ImageStore
from stages.params import ParamsError
from stages.sources import Record, SourceError, parse_sources, read_source
from stages.split import PrepareError
from stages.text import REPAIRS, clean_text_explained

DATASET, REPORTS = Path("dataset"), Path("reports")
COLUMNS = ["id", "text", "image_path", "label"]
INPUT_KEYS = ("strip_urls", "max_side", "dummy_size")


def clean_rows(records: list[Record], store: ImageStore, strip_urls: bool) -> pd.DataFrame:
    """One row per record, in ledger order (id = ledger_id): cleaned text, image digest, event,
    the repair/drop kinds met ('kinds') and routine cleaning steps ('cleaning')."""
    rows, seen = [], {}
    for ledger_id, rec in enumerate(tqdm(records, desc="prepare", unit="row"), start=1):
        row = dict(
            id=ledger_id,
            source=rec.source,
            row_id=rec.row_id,
            label=rec.label,
            text="",
            split=rec.split,
            event=rec.event,
            digest="",
            kinds=list(rec.issues),
            cleaning=[],
        )
        rows.append(row)
        if ledger.is_dropped(row["kinds"]):
            continue
        text, steps = clean_text_explained(rec.text, strip_urls)
        image = store.get(rec.images, rec.image_root)
        row["kinds"] += [f"text_{s}" for s in sorted(steps & REPAIRS)]
        row["kinds"] += [f"image_{image.problem}"] if image.problem else []
        row.update(text=text, digest=image.digest, cleaning=sorted(steps - REPAIRS))
        if not text and image.digest == store.dummy:
            row["kinds"].append("empty_post")
        elif (first := seen.setdefault((text, image.digest), row)) is not row:
            same = first["label"] == rec.label
            row["kinds"].append("duplicate" if same else "duplicate_conflict")
            if not same and "label_conflict" not in first["kinds"]:
                first["kinds"].append("label_conflict")  # kept with the first label seen
    return pd.DataFrame(rows)


def run(params_file: Path) -> dict[str, Any]:
    """The whole stage: read, clean, group, split, balance, write; returns the report."""
    stage = config.load(config.PrepareStage, params_file)
    classes, cfg = list(stage.classes), stage.prepare
    sources = parse_sources(stage.data.sources, classes)
    tracking.check_tracked("prepare", [p for s in sources for p in (s.path, s.image_root)])
    records = [r for s in sources for r in read_source(s)]
    DATASET.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=DATASET) as staging:
        store = ImageStore(Path(staging), cfg.max_side, cfg.dummy_size)
        table = clean_rows(records, store, cfg.strip_urls)
        live, out, groups = splitting.split_rows(table, classes, cfg, store)
        train_digests = pd.concat([out["train_balanced"]["digest"], out["val"]["digest"]])
        written = {
            "images_train": store.export(DATASET / "images_train", train_digests),
            "images_test": store.export(DATASET / "images_test", out["test_balanced"]["digest"]),
        }
    write_json(DATASET / "classes.json", classes)
    # What shapes a model's input: predict reads it back through model.json, not params.yaml.
    write_json(DATASET / "input.json", {key: getattr(cfg, key) for key in INPUT_KEYS})
    for name, frame in out.items():
        csvsafe.write_csv(frame[COLUMNS], DATASET / f"{name}.csv")
    lines = ledger.ledger(table)
    csvsafe.write_csv(lines, REPORTS / "prepare_ledger.csv")
    report = ledger.summary(table, lines, live, out, classes, store, written) | {"groups": groups}
    write_json(REPORTS / "prepare.json", report)
    return report | {"outputs": {name: len(frame) for name, frame in out.items()}}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        report = run(args.params)
    except (
        ParamsError,
        SourceError,
        PrepareError,
        tracking.UntrackedError,
        ImageDecodeError,
    ) as exc:
        raise SystemExit(f"prepare: error: {exc}") from None
    except OSError as exc:  # a full disk, an unwritable dataset/: name the file
        raise SystemExit(f"prepare: error: {exc.filename or ''}: {exc.strerror or exc}") from None
    print(
        f"prepare: {report['rows']} in {time.perf_counter() - started:.1f}s; "
        f"rows out: {report['outputs']}"
    )


if __name__ == "__main__":
    main()
