"""The prepare stage end to end: every bad-input row accounted for in the ledger, outputs as
the contract says, the grouped split (no image on both sides), params errors, and the ledger
identity on the full real crisis4 and CrisisMMD sources."""

from __future__ import annotations

import collections
import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from stages import images, prepare
from stages.csvsafe import read_csv
from stages.ledger import DROPS

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["urgent_help", "relief_info", "misinformation", "irrelevant"]
OUTPUTS = [
    "train_balanced",
    "val",
    "test_balanced",
    "train_balanced_100",
    "test_balanced_100",
    "train_balanced_100_interleaved",
]
PREPARE = {
    "seed": 42,
    "strip_urls": True,
    "dummy_size": 32,
    "max_side": 64,
    "test_size": 0.25,
    "val_size": 0.2,
    "balance": "downsample",
    "per_class_small": 3,
    "near_duplicate_bits": 30,
    "min_shared_words": 4,
    "group_by": "content",
    "test_events": [],
    "split_leaks": "drop",
}


def run_prepare(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    sources: list[dict[str, Any]],
    classes: list[str] = CLASSES,
    **overrides: Any,
) -> dict[str, Any]:
    """Run the stage in `workdir` on the given sources; return its report, ledger, outputs."""
    params = {"classes": classes, "data": {"sources": sources}, "prepare": PREPARE | overrides}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(workdir)
    prepare.main(["--params", str(workdir / "params.yaml")])
    return {
        "report": json.loads((workdir / "reports" / "prepare.json").read_text()),
        "ledger": read_csv(workdir / "reports" / "prepare_ledger.csv"),
        **{name: read_csv(workdir / "dataset" / f"{name}.csv") for name in OUTPUTS},
    }


def check_accounting(result: dict[str, Any], workdir: Path, rows_in: int) -> None:
    """Rows in = kept + repaired + dropped; outputs hold exactly the rows not dropped."""
    ledger, rows = result["ledger"], result["report"]["rows"]
    assert len(ledger) == rows["in"] == rows_in
    assert rows["kept"] + rows["repaired"] + rows["dropped"] == rows_in
    assert ledger["ledger_id"].tolist() == list(range(1, rows_in + 1))
    assert ledger["fate"].value_counts().to_dict() == {
        f: rows[f] for f in ("kept", "repaired", "dropped") if rows[f]
    }
    # One primary reason per row: the drop reasons add up to the dropped rows, and repairs
    # are counted on the rows that are kept only.
    report = result["report"]
    assert sum(report["drops"].values()) == rows["dropped"]
    assert sum(s["in"] for s in report["sources"].values()) == rows_in
    alive = ledger[ledger["fate"] != "dropped"]
    repairs = collections.Counter(k for d in alive["details"].fillna("") for k in d.split(";") if k)
    assert report["repairs"] == dict(repairs)
    assert (ledger.loc[ledger["fate"] == "kept", "reason"].fillna("") == "").all()
    assert ledger.loc[ledger["fate"] != "kept", "reason"].notna().all()
    used = pd.concat([result[n] for n in ("train_balanced", "val", "test_balanced")])
    assert used["id"].is_unique
    assert set(used["id"]) == set(ledger.loc[ledger["fate"] != "dropped", "ledger_id"])
    for name in OUTPUTS:
        assert list(result[name].columns) == ["id", "text", "image_path", "label"]
        assert set(result[name]["label"]) <= set(CLASSES)
    for small, full in (
        ("train_balanced_100", "train_balanced"),
        ("test_balanced_100", "test_balanced"),
        ("train_balanced_100_interleaved", "train_balanced_100"),
    ):
        assert set(result[small]["id"]) <= set(result[full]["id"])
    for path in used["image_path"]:
        assert (workdir / "dataset" / path).is_file(), path
    assert not (
        set(result["test_balanced"]["image_path"].str.rsplit("/").str[-1])
        & set(
            pd.concat([result["train_balanced"], result["val"]])["image_path"]
            .str.rsplit("/")
            .str[-1]
        )
        - {_dummy_name(result)}
    )


def _dummy_name(result: dict[str, Any]) -> str:
    ledger = result["ledger"]
    dummy_ids = ledger.loc[ledger["details"].str.contains("image_"), "ledger_id"]
    used = pd.concat([result[n] for n in ("train_balanced", "val", "test_balanced")])
    names = used.loc[used["id"].isin(dummy_ids), "image_path"].str.rsplit("/").str[-1]
    return names.iloc[0] if len(names) else ""


@pytest.fixture
def messy_source(
    tmp_path: Path, make_image: Callable[..., Path], png_claiming: Callable[[int, int], bytes]
) -> tuple[dict, dict[str, str]]:
    """A CSV source of good posts (8 images per class, 2 posts each) plus one row per bad case;
    returns the source entry and, per bad row id, the reason the ledger must give."""
    root = tmp_path / "raw" / "images"
    rows = []
    for label in CLASSES:
        for i in range(8):
            size = (100, 50) if i == 0 else (32, 24)  # max_side is 64: 4 get downscaled
            image = make_image(f"raw/images/{label}/{i} photo ü.jpg", size, noise=True).relative_to(
                root
            )
            for k in range(2):
                rows.append(
                    [
                        f"{label}-{i}-{k}",
                        f"{label} post {i} variant {k} http://t.co/{k}",
                        str(image),
                        label,
                    ]
                )
    good = rows[0][2]
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    (root / "bomb.png").write_bytes(png_claiming(20000, 20000))
    truncated = (root / rows[0][2]).read_bytes()
    (root / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    outside = make_image("secret.jpg")
    (root / "link_out.jpg").symlink_to(outside)
    bad = {  # row id: (text, image_path, label, expected reason)
        "missing": ("flood missing", "nope.jpg", "urgent_help", "image_missing"),
        "zero": ("flood zero", "empty.jpg", "relief_info", "image_empty"),
        "textfile": ("flood text", "text.jpg", "irrelevant", "image_not_image"),
        "truncated": ("flood cut", "truncated.jpg", "relief_info", "image_truncated"),
        "bomb": ("flood bomb", "bomb.png", "misinformation", "image_bomb"),
        "dotdot": ("flood up", "../../secret.jpg", "irrelevant", "image_path_escape"),
        "absolute": ("flood abs", str(outside), "irrelevant", "image_path_escape"),
        "symlink": ("flood link", "link_out.jpg", "irrelevant", "image_path_escape"),
        "emoji_only": ("😀🔥", "nope.jpg", "irrelevant", "empty_post;image_missing"),
        "duplicate": (rows[0][1], good, "urgent_help", "duplicate"),
        "conflict": (rows[0][1], good, "irrelevant", "duplicate_conflict"),
        "unknown_label": ("flood", good, "kittens", "label_unmapped"),
        "html": (
            "<b>Flood</b> &amp;amp; rain",
            good,
            "relief_info",
            "text_html_entities;text_html_tags",
        ),
        "mojibake": ("Sandyâ€™s flood", good, "relief_info", "text_mojibake"),
        "controls": ("flo\x00od\x07 \u202ewarning", good, "relief_info", "text_control_chars"),
        "formula": ("=cmd|' /C calc'!A0", good, "irrelevant", ""),
        "long": ("flood " * 20000, good, "irrelevant", "text_truncated"),
        "rtl": ("فيضان في المدينة", good, "relief_info", ""),
    }
    path = tmp_path / "raw" / "posts.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(["id", "text", "image_path", "label", "extra"])
        writer.writerows(r + ["x"] for r in rows)
        writer.writerows([key, *values[:3], "x"] for key, values in bad.items())
    with path.open("ab") as fh:
        fh.write(b"cp1252,caf\xe9 \x93flood\x94,nope.jpg,urgent_help,x\r\n")
        fh.write(b"malformed,only three,fields\r\n")
    expected = {key: reason for key, (_, _, _, reason) in bad.items()}
    # A malformed row's id column cannot be trusted: its row id is its data line number.
    expected |= {
        "cp1252": "text_not_utf8;image_missing",
        str(len(rows) + len(bad) + 2): "malformed_row",
    }
    return {"name": "messy", "path": str(path), "format": "csv", "image_root": str(root)}, expected


def test_every_bad_case_is_accounted_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, messy_source: tuple[dict, dict]
) -> None:
    source, expected = messy_source
    result = run_prepare(tmp_path, monkeypatch, [source], balance="none")
    check_accounting(result, tmp_path, rows_in=64 + len(expected))
    lines = result["ledger"].set_index("row_id")
    for row_id, details in expected.items():
        assert lines.loc[row_id, "details"] == details, row_id
        assert lines.loc[row_id, "reason"] == details.split(";")[0], row_id
    report = result["report"]
    assert report["repairs"]["image_path_escape"] == 3
    assert report["drops"]["duplicate"] == 1 and report["drops"]["downsampled"] == 0
    assert report["images"]["normalised"] == {"downscaled": 4}
    assert json.loads((tmp_path / "dataset" / "classes.json").read_text()) == CLASSES
    texts = pd.concat([result[n] for n in ("train_balanced", "val", "test_balanced")])
    by_id = texts.set_index("id")["text"]
    ids = result["ledger"].set_index("row_id")["ledger_id"]
    assert by_id[ids["formula"]] == "=cmd|' /C calc'!A0"  # read back exactly
    raw = (tmp_path / "dataset").glob("*.csv")
    assert any(
        "\n" + str(ids["formula"]) + ",'=cmd|" in p.read_text(encoding="utf-8") for p in raw
    )  # stored neutralised
    assert by_id[ids["cp1252"]] == 'café "flood"'
    assert by_id[ids["controls"]] == "flood warning"


def test_balancing_and_small_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, messy_source: tuple[dict, dict]
) -> None:
    source, expected = messy_source
    result = run_prepare(tmp_path, monkeypatch, [source])
    check_accounting(result, tmp_path, rows_in=64 + len(expected))
    for name in ("train_balanced", "test_balanced"):
        counts = result[name]["label"].value_counts()
        assert set(counts.index) == set(CLASSES) and counts.nunique() == 1
        assert (result[f"{name}_100"]["label"].value_counts() <= 3).all()
    assert result["report"]["drops"]["downsampled"] > 0
    interleaved = result["train_balanced_100_interleaved"]["label"].tolist()
    assert interleaved[:4] == CLASSES and interleaved[4:8] == CLASSES


def test_source_split_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_image: Callable[..., Path]
) -> None:
    path = tmp_path / "posts.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "image_path", "label", "split"])
        for n in range(24):
            split = ("train", "dev", "test")[n % 3]
            make_image(f"{n}.png", noise=True)
            writer.writerow([f"post {n}", f"{n}.png", CLASSES[n % 4], split])
    result = run_prepare(tmp_path, monkeypatch, [{"path": str(path)}], balance="none")
    check_accounting(result, tmp_path, rows_in=24)
    assert sorted(result["val"]["id"]) == [n + 1 for n in range(24) if n % 3 == 1]
    assert sorted(result["test_balanced"]["id"]) == [n + 1 for n in range(24) if n % 3 == 2]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prepare": {"balance": "upsample"}}, "prepare.balance='upsample'"),
        ({"prepare": {"test_size": 1.5}}, "prepare.test_size"),
        ({"classes": ["a", "a"]}, "distinct"),
        ({"source": {"format": "parquet"}}, "format 'parquet'"),
        ({"source": {"label_map": {"urgent_help": "rescue"}}}, "not in classes"),
        ({"classes": ["fake", "real"]}, "none of its labels"),
        ({"source": {"path": "nowhere.csv"}}, "nowhere.csv: cannot read"),
    ],
)
def test_bad_params_fail_with_a_clear_message(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    messy_source: tuple[dict, dict],
    change: dict,
    message: str,
) -> None:
    source, _ = messy_source
    settings = PREPARE | change.get("prepare", {})
    with pytest.raises(SystemExit) as caught:
        run_prepare(
            tmp_path,
            monkeypatch,
            [source | change.get("source", {})],
            classes=change.get("classes", CLASSES),
            **settings,
        )
    assert message in str(caught.value) and str(caught.value).startswith("prepare: error:")


def test_shipped_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repository's own params.yaml on the shipped sample, as `dvc repro` runs it."""
    if not (ROOT / "dataset" / "raw" / "crisis4_sample.csv").is_file():
        pytest.skip("the shipped sample dataset/raw is not present")
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "raw").symlink_to(ROOT / "dataset" / "raw")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    result = run_prepare(
        tmp_path, monkeypatch, params["data"]["sources"], params["classes"], **params["prepare"]
    )
    rows_in = sum(1 for _ in open(ROOT / "dataset/raw/crisis4_sample.csv", encoding="utf-8")) - 1
    rows_in += sum(1 for _ in open(ROOT / "dataset/raw/crisismmd_sample.tsv", encoding="utf-8")) - 1
    check_accounting(result, tmp_path, rows_in)
    assert set(result["train_balanced"]["label"]) == set(params["classes"])


def test_real_crisis4_ledger_identity(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = {"path": str(shared_data / "crisis4" / "crisis4.csv"), "image_root": str(shared_data)}
    result = run_prepare(
        tmp_path,
        monkeypatch,
        [source],
        **(
            PREPARE
            | {
                "test_size": 0.2,
                "val_size": 0.1,
                "max_side": 448,
                "dummy_size": 224,
                "per_class_small": 100,
            }
        ),
    )
    check_accounting(result, tmp_path, rows_in=13878)
    report = result["report"]
    assert report["images"]["files_usable"] == 416
    assert report["groups"]["across_splits"] == {"image_pairs": 0, "texts": 0}
    assert report["groups"]["merged_by"]["near_duplicate_image"] > 0
    assert report["groups"]["merged_by"]["same_text"] > 0
    assert report["repairs"]["text_mojibake"] > 0 and report["drops"]["duplicate"] > 1000


def test_real_crisismmd_ledger_identity(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = shared_data / "crisismmd"
    sources = [
        {
            "name": f"crisismmd_{s}",
            "format": "crisismmd",
            "split": s,
            "path": str(folder / f"task_humanitarian_text_img_agreed_lab_{s}.tsv"),
            "image_root": str(tmp_path / "no_images"),
        }
        for s in ("train", "dev", "test")
    ]
    result = run_prepare(tmp_path, monkeypatch, sources, per_class_small=100)
    check_accounting(result, tmp_path, rows_in=6126 + 998 + 955)
    report = result["report"]
    rows = report["rows"]
    assert rows["kept"] == 0 and report["repairs"]["image_missing"] == rows["repaired"]  # no images
    assert report["drops"]["split_leak"] > 0  # retweets in two of CrisisMMD's own splits
    assert report["groups"]["across_splits"]["texts"] == 0
    assert report["sources"]["crisismmd_dev"]["in"] == 998
    assert set(result["val"]["id"]) <= set(range(6127, 6126 + 998 + 1))  # dev rows only
    assert set(DROPS) == set(report["drops"])


def _event_source(tmp_path: Path, make_image: Callable[..., Path]) -> dict:
    """Four events, 8 posts per class each, one picture per post; one 'nepal' post reuses a
    'sandy' picture (the misinformation pattern: an image from another disaster)."""
    path = tmp_path / "posts.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "image_path", "label", "event"])
        for event in ("sandy", "nepal", "boston", "paris"):
            for label in CLASSES:
                for i in range(8):
                    name = f"{event}_{label}_{i}.png"
                    make_image(name, (64, 64), noise=True)
                    writer.writerow(
                        [f"{event}-{label}-{i}", f"{event} {label} post {i}", name, label, event]
                    )
        writer.writerow(
            [
                "reused",
                "nepal shark on the highway",
                "sandy_urgent_help_0.png",
                "misinformation",
                "nepal",
            ]
        )
    return {"path": str(path), "image_root": str(tmp_path)}


def test_held_out_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_image: Callable[..., Path]
) -> None:
    source = _event_source(tmp_path, make_image)
    result = run_prepare(
        tmp_path,
        monkeypatch,
        [source],
        balance="none",
        test_events=["sandy"],
        group_by="event",
        val_size=0.5,
    )
    check_accounting(result, tmp_path, rows_in=129)
    test_ids = set(result["test_balanced"]["id"])
    ledger = result["ledger"].set_index("row_id")
    assert {ledger.loc[i, "ledger_id"] for i in ledger.index if i.startswith("sandy")} == test_ids
    # group_by=event: the nepal post that shares a sandy picture links all of nepal to the
    # held-out event, so nepal is dropped rather than trained on (it would leak).
    nepal = [i for i in ledger.index if i.startswith("nepal") or i == "reused"]
    assert (ledger.loc[nepal, "reason"] == "split_leak").all()
    others = [i for i in ledger.index if i.startswith(("boston", "paris"))]
    assert (ledger.loc[others, "fate"] == "kept").all()
    lines = result["ledger"].set_index("ledger_id")
    val = {i.split("-")[0] for i in lines.loc[result["val"]["id"], "row_id"]}
    train = {i.split("-")[0] for i in lines.loc[result["train_balanced"]["id"], "row_id"]}
    assert len(val) == len(train) == 1 and val | train == {"boston", "paris"}  # unseen in val too
    # By content only, just the post with the reused picture is dropped.
    result = run_prepare(tmp_path, monkeypatch, [source], balance="none", test_events=["sandy"])
    assert result["ledger"].set_index("row_id").loc["reused", "reason"] == "split_leak"
    assert result["report"]["drops"]["split_leak"] == 1


def test_random_event_split_keeps_events_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_image: Callable[..., Path]
) -> None:
    source = _event_source(tmp_path, make_image)
    result = run_prepare(
        tmp_path,
        monkeypatch,
        [source],
        balance="none",
        group_by="event",
        test_size=0.34,
        val_size=0.5,
    )
    lines = result["ledger"].set_index("ledger_id")
    found = []
    for name in ("train_balanced", "val", "test_balanced"):
        found.append(
            frozenset(
                {lines.loc[i, "row_id"].split("-")[0] for i in result[name]["id"]} - {"reused"}
            )
        )
    # One event per split, but nepal shares a picture with sandy: those two go together.
    assert sorted(found, key=sorted) == sorted(
        [{"boston"}, {"paris"}, {"nepal", "sandy"}], key=sorted
    )


def test_an_untracked_source_is_refused_by_the_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, messy_source: tuple[dict, dict]
) -> None:
    source, _ = messy_source
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"prepare": {"cmd": "python -m stages.prepare", "deps": ["dataset/raw"]}}}
        )
    )
    with pytest.raises(SystemExit) as caught:
        run_prepare(tmp_path, monkeypatch, [source])
    assert str(caught.value).startswith("prepare: error: ")
    assert "posts.csv is not tracked by DVC" in str(caught.value)
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"prepare": {"cmd": "python -m stages.prepare", "deps": ["raw"]}}}
        )
    )
    check_accounting(run_prepare(tmp_path, monkeypatch, [source]), tmp_path, 84)


@pytest.mark.parametrize(
    "case", ["too_few_rows", "dataset_is_a_file", "params_missing", "decoder_out_of_memory"]
)
def test_every_known_failure_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, messy_source: tuple[dict, dict], case: str
) -> None:
    source, _ = messy_source
    if case == "too_few_rows":
        tiny = tmp_path / "tiny.csv"
        tiny.write_text("text,image_path,label\nflood,a.jpg,urgent_help\nrain,b.jpg,irrelevant\n")
        source = {"path": str(tiny), "image_root": str(tmp_path)}
    elif case == "dataset_is_a_file":
        (tmp_path / "dataset").write_text("not a folder")
    elif case == "decoder_out_of_memory":  # not a property of the file: stop, never a dummy

        def exhausted(*_: Any) -> None:
            raise MemoryError("cannot allocate")

        monkeypatch.setattr(images, "_decode", exhausted)
    with pytest.raises(SystemExit) as caught:
        if case == "params_missing":
            monkeypatch.chdir(tmp_path)
            prepare.main(["--params", str(tmp_path / "nowhere.yaml")])
        run_prepare(tmp_path, monkeypatch, [source])
    message = str(caught.value)
    assert message.startswith("prepare: error: ") and "Traceback" not in message
    assert {
        "too_few_rows": "too few to split",
        "dataset_is_a_file": "dataset",
        "params_missing": "nowhere.yaml",
        "decoder_out_of_memory": "photo ü.jpg: MemoryError: cannot allocate",
    }[case] in message
