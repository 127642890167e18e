"""The shipped real sample in dataset/raw/ is sound, and is what tools/make_sample.py makes."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "dataset" / "raw"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
C4_COLUMNS = [
    "post_id",
    "text",
    "image_path",
    "label",
    "source_label",
    "event",
    "source_split",
    "image_id",
]
MMD_COLUMNS = [
    "event_name",
    "tweet_id",
    "image_id",
    "tweet_text",
    "image",
    "label",
    "label_text",
    "label_image",
    "label_text_image",
]
MMD_TO_CLASS = {
    "affected_individuals": "urgent_help",
    "injured_or_dead_people": "urgent_help",
    "missing_or_found_people": "urgent_help",
    "rescue_volunteering_or_donation_effort": "relief_info",
    "infrastructure_and_utility_damage": "relief_info",
    "vehicle_damage": "relief_info",
    "other_relevant_information": "relief_info",
    "not_humanitarian": "irrelevant",
}
MAX_BYTES = 15_000_000
needs_shared = pytest.mark.skipif(
    not (SHARED / "crisis4" / "crisis4.csv").is_file(),
    reason=f"shared data not found at {SHARED}: cannot compare the sample with its sources",
)


def crlf_lines(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8")
    assert text.endswith("\r\n"), f"{path.name}: last line must end in CRLF"
    lines = text[:-2].split("\r\n")
    assert not any("\n" in x or "\r" in x for x in lines), f"{path.name}: bare CR or LF"
    return lines


def crisis4_rows() -> list[dict[str, str]]:
    with (RAW / "crisis4_sample.csv").open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == C4_COLUMNS
        rows = list(reader)
    assert all(None not in row and None not in row.values() for row in rows), "ragged row"
    return rows


def crisismmd_rows() -> list[list[str]]:
    with (RAW / "crisismmd_sample.tsv").open(encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def manifest() -> dict[str, dict[str, str]]:
    with (RAW / "images_manifest.csv").open(encoding="utf-8", newline="") as fh:
        return {row["image_path"]: row for row in csv.DictReader(fh)}


def test_crisis4_sample_has_about_100_posts_per_class_over_distinct_images():
    rows = crisis4_rows()
    assert len(crlf_lines(RAW / "crisis4_sample.csv")) == len(rows) + 1  # one line per post
    assert len({r["post_id"] for r in rows}) == len(rows)
    counts = Counter(r["label"] for r in rows)
    # crisis4 has only 56 urgent_help posts: all of them
    assert counts == {
        "misinformation": 100,
        "relief_info": 100,
        "irrelevant": 100,
        "urgent_help": 56,
    }
    images = {lab: {r["image_path"] for r in rows if r["label"] == lab} for lab in counts}
    assert {lab: len(v) for lab, v in images.items() if lab != "urgent_help"} == {
        "misinformation": 100,
        "relief_info": 100,
        "irrelevant": 100,
    }
    assert len(images["urgent_help"]) == 13  # every urgent_help image crisis4 has


def test_each_class_has_about_100_rows_with_crisismmd_mapped():
    totals = Counter(r["label"] for r in crisis4_rows())
    totals.update(MMD_TO_CLASS[row[5]] for row in crisismmd_rows()[1:])
    assert totals["urgent_help"] == 100
    assert all(90 <= n <= 140 for n in totals.values()), totals


def test_every_image_path_exists_and_keeps_its_original_format():
    rows, made = crisis4_rows(), manifest()
    paths = {r["image_path"] for r in rows}
    assert paths == set(made), "manifest and CSV name different images"
    on_disk = {
        p.relative_to(RAW / "images").as_posix() for p in (RAW / "images").rglob("*") if p.is_file()
    }
    assert on_disk == paths, f"missing: {paths - on_disk}, stray: {on_disk - paths}"
    for rel, info in made.items():
        path = RAW / "images" / rel
        assert path.stat().st_size == int(info["sample_bytes"]), rel
        with Image.open(path) as im:
            assert (im.format, im.mode) == (info["format"], info["mode"]), rel
            if info["action"] == "downscaled":
                assert max(im.size) <= 640, rel
            else:
                assert "x".join(map(str, im.size)) == info["original_size"], rel


def test_sample_keeps_the_odd_images():
    odd = Counter()
    for rel in manifest():
        with Image.open(RAW / "images" / rel) as im:
            odd["png_named_jpg"] += im.format == "PNG" and rel.endswith(".jpg")
            odd["animated_gif"] += im.format == "GIF" and im.is_animated
            odd["rgba_png"] += im.format == "PNG" and im.mode == "RGBA"
            odd["jpeg_ext"] += rel.endswith(".jpeg")
            odd["space_in_path"] += " " in rel
    assert all(
        odd[k] >= 1
        for k in ("png_named_jpg", "animated_gif", "rgba_png", "jpeg_ext", "space_in_path")
    ), odd


def test_raw_folder_fits_the_size_budget():
    size = sum(p.stat().st_size for p in RAW.rglob("*") if p.is_file())
    assert size <= MAX_BYTES, f"dataset/raw is {size:,} bytes"


def test_crisismmd_sample_is_the_source_format_with_missing_images():
    lines = crlf_lines(RAW / "crisismmd_sample.tsv")
    rows = crisismmd_rows()
    assert len(rows) == len(lines) and rows[0] == MMD_COLUMNS
    assert all(len(row) == 9 for row in rows), "QUOTE_NONE rows must have 9 fields"
    body = rows[1:]
    assert len({row[1] for row in body}) == len(body), "one row per tweet"
    texts = "\n".join(row[3] for row in body)
    assert ("â€" in texts or "‚Ä" in texts) and "&amp;" in texts, "no mojibake/entity rows"
    assert not (RAW / "crisismmd_images").exists()
    assert not any((RAW / "crisismmd_images" / row[4]).exists() for row in body)


@needs_shared
def test_sample_lines_are_their_source_lines_byte_for_byte():
    source = {
        line.split(",", 1)[0]: line for line in crlf_lines(SHARED / "crisis4" / "crisis4.csv")[1:]
    }
    sample = crlf_lines(RAW / "crisis4_sample.csv")
    assert sample[0] == crlf_lines(SHARED / "crisis4" / "crisis4.csv")[0]
    for line in sample[1:]:
        assert line == source[line.split(",", 1)[0]], line
    mmd = set()
    for split in ("train", "dev", "test"):
        mmd.update(
            crlf_lines(SHARED / "crisismmd" / f"task_humanitarian_text_img_agreed_lab_{split}.tsv")
        )
    assert set(crlf_lines(RAW / "crisismmd_sample.tsv")) <= mmd


@needs_shared
def test_copied_images_are_the_originals():
    for rel, info in manifest().items():
        original = (SHARED / rel).read_bytes()
        assert hashlib.sha256(original).hexdigest() == info["original_sha256"], rel
        if info["action"] == "copied":
            assert (RAW / "images" / rel).read_bytes() == original, rel


@needs_shared
def test_make_sample_reproduces_the_shipped_sample(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_sample.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for name in ("crisis4_sample.csv", "crisismmd_sample.tsv"):
        assert (tmp_path / name).read_bytes() == (RAW / name).read_bytes(), name
    # downscaled bytes depend on the Pillow/libjpeg build, so only their choice is compared
    fresh = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    shipped = {p.relative_to(RAW).as_posix() for p in RAW.rglob("*") if p.is_file()}
    assert fresh == shipped - {".gitattributes"}
