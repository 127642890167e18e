"""Reading sources: the real crisis4 / CrisisMMD / MediaEval files, each generated table case,
and the params checks on data.sources."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from stages.params import ParamsError
from stages.sources import Source, SourceError, parse_sources, read_source

CLASSES = ["urgent_help", "relief_info", "misinformation", "irrelevant"]


def _source(path: Path, fmt: str = "csv", classes: list[str] = CLASSES, **extra) -> Source:
    entry = {"path": str(path), "format": fmt, "image_root": str(path.parent)} | extra
    return parse_sources([entry], classes)[0]


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_real_crisis4(shared_data: Path) -> None:
    source = _source(shared_data / "crisis4" / "crisis4.csv", image_root=str(shared_data))
    records = read_source(source)
    assert len(records) == 13878
    assert all(r.label in CLASSES and not r.issues for r in records)
    assert records[0].row_id == "324597532548276224"  # post_id is the row id
    assert records[0].images[0].startswith("mediaeval/2016/devset/images/")


@pytest.mark.parametrize("split, rows", [("train", 6126), ("dev", 998), ("test", 955)])
def test_real_crisismmd_default_map(shared_data: Path, split: str, rows: int) -> None:
    path = shared_data / "crisismmd" / f"task_humanitarian_text_img_agreed_lab_{split}.tsv"
    records = read_source(_source(path, "crisismmd", split=split))
    assert len(records) == rows
    assert {r.label for r in records} == {"urgent_help", "relief_info", "irrelevant"}
    assert {r.split for r in records} == {"val" if split == "dev" else split}
    assert all("_" in r.row_id for r in records)  # image_id: tweet_id + _n
    # 39 train texts begin with a raw `"`: QUOTE_NONE keeps them as they are.
    assert sum(r.text.startswith('"') for r in records) == {"train": 39, "dev": 7, "test": 6}[split]


def test_real_crisismmd_native_labels(shared_data: Path) -> None:
    native = [
        "affected_individuals",
        "infrastructure_and_utility_damage",
        "not_humanitarian",
        "other_relevant_information",
        "rescue_volunteering_or_donation_effort",
    ]
    path = shared_data / "crisismmd" / "task_humanitarian_text_img_agreed_lab_dev.tsv"
    records = read_source(_source(path, "crisismmd", native, label_column="label_text"))
    assert {r.label for r in records} == set(native)


def test_real_mediaeval_dev_and_test(shared_data: Path) -> None:
    base = shared_data / "mediaeval" / "2016"
    dev = read_source(
        _source(
            base / "devset" / "posts.txt", "mediaeval", image_root=str(base / "devset" / "images")
        )
    )
    assert len(dev) == 15629
    assert sum(r.label == "misinformation" for r in dev) == 9404
    assert sum("label_unmapped" in r.issues for r in dev) == 6225  # real: not mapped
    # Ids with a trailing space ("eclipse_08 ") still find their file by stem.
    eclipse = [r for r in dev if any(i.endswith("eclipse_08.jpg") for i in r.images)]
    assert eclipse and all("/" in r.images[0] for r in eclipse)
    assert any(len(r.images) > 1 for r in dev)
    assert any('\\"' in r.text for r in dev)  # kept for cleaning
    test = read_source(
        _source(
            base / "testset" / "posts_groundtruth.txt",
            "mediaeval",
            ["fake", "real"],
            image_root=str(base / "testset" / "images"),
        )
    )
    assert len(test) == 2228 and {r.label for r in test} == {"fake", "real"}


def test_extra_columns_bom_crlf_quotes_tabs(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "posts.csv",
        "\ufefftext,extra,image_path,label,split\r\n"
        '"Say ""help"", now\tplease",x,a.jpg,urgent_help,train\r\n'
        '"multi\r\nline",y,b.jpg,irrelevant,dev\r\n'
        "plain,z,c.jpg,relief_info,\r\n",
    )
    records = read_source(_source(path))
    assert [r.text for r in records] == ['Say "help", now\tplease', "multi\r\nline", "plain"]
    assert [r.split for r in records] == ["train", "val", None]
    assert [r.row_id for r in records] == ["1", "2", "3"]  # no id column


def test_row_level_problems_become_issues(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "posts.csv",
        "text,image_path,label,split\n"
        "ok,a.jpg,urgent_help,train\n"
        "unknown label,a.jpg,kittens,train\n"
        "bad split,a.jpg,irrelevant,holdout\n"
        "too,many,fields,here,now\n"
        "\n"  # blank line: a row, dropped
        " , , ,\n"  # blank fields: likewise
        "short,row\n",
    )
    records = read_source(_source(path))
    assert [r.issues for r in records] == [
        [],
        ["label_unmapped"],
        ["split_unknown"],
        ["malformed_row"],
        ["blank_row"],
        ["blank_row"],
        ["malformed_row"],
    ]
    assert [r.row_id for r in records][-3:] == ["5", "6", "7"]  # data line numbers


def test_non_utf8_bytes_are_read_and_flagged(tmp_path: Path) -> None:
    raw = (
        b"text,image_path,label\n"
        + "caf\u00e9 \u201cx\u201d,a.jpg,irrelevant\n".encode("cp1252")
        + "ok ✓,b.jpg,irrelevant\n".encode()
    )
    (tmp_path / "mixed.csv").write_bytes(raw)
    first, second = read_source(_source(tmp_path / "mixed.csv"))
    assert first.text == "caf\u00e9 \u201cx\u201d" and first.issues == ["text_not_utf8"]
    assert second.text == "ok ✓" and second.issues == []


def test_utf16_file(tmp_path: Path) -> None:
    path = tmp_path / "u16.csv"
    path.write_bytes(
        codecs.BOM_UTF16_LE + "text,image_path,label\nhé,a.jpg,irrelevant\n".encode("utf-16-le")
    )
    assert read_source(_source(path))[0].text == "hé"


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty"),
        ("  \r\n\n", "empty"),
        ("text,label\nx,irrelevant\n", "missing column 'image_path'"),
        ("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "missing column"),
        ("text,text,image_path,label\n", "repeated column"),
        (
            'text,image_path,label\n"never closed,a.jpg,irrelevant\nnext,b.jpg,irrelevant\n',
            "unclosed quote",
        ),
        ("text,image_path,label\nx,a.jpg,kittens\ny,b.jpg,puppies\n", "none of its labels"),
    ],
)
def test_bad_files_name_file_and_problem(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path / "bad.csv", content)
    with pytest.raises(SourceError, match=message) as caught:
        read_source(_source(path))
    assert str(path) in str(caught.value)


def test_unreadable_paths(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.csv", tmp_path):
        with pytest.raises(SourceError, match="cannot read") as caught:
            read_source(_source(path))
        assert str(path) in str(caught.value)


def test_crisismmd_missing_label_column(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "x.tsv",
        "tweet_id\timage_id\ttweet_text\timage\tlabel\n1\t1_0\thi\ta.jpg\tnot_humanitarian\n",
    )
    with pytest.raises(SourceError, match="label_text"):
        read_source(_source(path, "crisismmd", label_column="label_text"))


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"path": "a.csv", "format": "xlsx"}, "format 'xlsx'"),
        ({"path": "a.csv", "image_rot": "x"}, "unknown key"),
        ({"path": "a.csv", "split": "holdout"}, "split 'holdout'"),
        ({"path": "a.csv", "label_map": {"x": "nonclass"}}, "not in classes"),
        ({"path": "a.csv", "label_map": ["x"]}, "mapping"),
        ({"format": "csv"}, "path"),
    ],
)
def test_bad_source_params(entry: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_sources([entry], CLASSES)


def test_source_params_defaults_and_duplicates() -> None:
    with pytest.raises(ParamsError, match="used twice"):
        parse_sources([{"path": "a/x.csv"}, {"path": "b/x.csv"}], CLASSES)
    with pytest.raises(ParamsError, match="non-empty list"):
        parse_sources([], CLASSES)
    (source,) = parse_sources([{"path": "d/x.tsv", "format": "mediaeval"}], ["fake", "real"])
    assert source.name == "x" and source.image_root == Path("d")
    assert source.label_map == {"fake": "fake", "real": "real"}
