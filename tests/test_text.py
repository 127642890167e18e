"""The text cleaner: real damage from the corpora, each generated bad-input case, and
property tests (never raises, idempotent, valid UTF-8, no emoji, no tags)."""
from __future__ import annotations

import csv
import time
from html.parser import HTMLParser
from pathlib import Path

import emoji
import pytest
from hypothesis import given, settings, strategies as st

from stages.text import REPAIRS, clean_text, clean_text_explained, decode_bytes


def _crisismmd_texts(shared: Path) -> list[str]:
    path = shared / "crisismmd" / "task_humanitarian_text_img_agreed_lab_train.tsv"
    with path.open(encoding="utf-8", newline="") as fh:
        return [row["tweet_text"] for row in csv.DictReader(fh, delimiter="\t",
                                                             quoting=csv.QUOTE_NONE)]


def _crisis4_texts(shared: Path) -> list[str]:
    with (shared / "crisis4" / "crisis4.csv").open(encoding="utf-8", newline="") as fh:
        return [row["text"] for row in csv.DictReader(fh)]


@pytest.mark.parametrize("damage, fixed", [
    ("â€™", "'"),      # Windows-1252 mojibake, CrisisMMD
    ("‚Äô", "'"),     # Mac-Roman mojibake, CrisisMMD
    ("â€¦", "…"),
])
def test_real_crisismmd_mojibake_is_repaired(shared_data: Path, damage: str, fixed: str) -> None:
    damaged = [t for t in _crisismmd_texts(shared_data) if damage in t]
    assert len(damaged) >= 5, f"expected real rows with {damage!r}"
    for text in damaged:
        cleaned, steps = clean_text_explained(text)
        assert damage not in cleaned and "mojibake" in steps
    assert any(fixed in clean_text(t) for t in damaged)


def test_real_crisis4_damage_is_repaired(shared_data: Path) -> None:
    texts = _crisis4_texts(shared_data)
    greek = [t for t in texts if "β€¦" in t]          # UTF-8 read as Windows-1253
    escaped = [t for t in texts if '\\"' in t or "\\n" in t]
    entities = [t for t in texts if "&amp;" in t]
    assert greek and escaped and entities
    assert all("…" in clean_text(t) and "β€" not in clean_text(t) for t in greek)
    assert all('\\"' not in clean_text(t) and "\\n" not in clean_text(t) for t in escaped)
    assert all("&amp;" not in clean_text(t) for t in entities)


def test_real_crisismmd_damaged_emoji_are_removed(shared_data: Path) -> None:
    # CrisisMMD stores U+1F602 as U+1F60 followed by "2"; both parts must go.
    damaged = [t for t in _crisismmd_texts(shared_data) if "\u1f60" in t]
    assert damaged
    for text in damaged:
        cleaned, steps = clean_text_explained(text)
        assert "\u1f60" not in cleaned and "damaged_emoji" in steps


@pytest.mark.parametrize("raw, expected, step", [
    ("Californiaâ€™s forests", "California's forests", "mojibake"),
    ("Food &amp;amp; water &gt; 10 &#8230;", "Food & water > 10 …", "html_entities"),
    ("<b>Help</b> needed <a href='x'>here</a><!-- c -->", "Help needed here", "html_tags"),
    ("I <3 you > them", "I <3 you > them", None),
    ('He said \\"go\\"\\nnow', 'He said "go" now', "literal_escapes"),
    ("http:\\/\\/t.co\\/abc flood", "flood", "literal_escapes"),
    ("Rescue 🚒🚑 now 👨‍👩‍👧 🇳🇵 1️⃣", "Rescue now", "emoji"),
    ("Mora \u1f605 Story", "Mora Story", "damaged_emoji"),
    ("a\x00b\x07c\x1bd\x7fe\u202ef\u200bg\ufeffh\u00adi\x1c.", "abcdefghi.", "control_chars"),
    ("  spaced \t\r\n out\u00a0\u2003x ", "spaced out x", "normalised"),
    ("e\u0301te \u201cquoted\u201d \uff21", 'éte "quoted" A', "normalised"),
])
def test_each_cleaning_case(raw: str, expected: str, step: str | None) -> None:
    cleaned, steps = clean_text_explained(raw)
    assert cleaned == expected
    if step:
        assert step in steps
    else:
        assert not steps & REPAIRS


@pytest.mark.parametrize("raw", ["", "   ", "\t\n", "😀🔥👍🏽", "\u200b\u200e", "<br/>", "&nbsp;"])
def test_empty_results(raw: str) -> None:
    assert clean_text(raw) == ""


def test_urls_are_stripped_only_when_asked() -> None:
    text = "Shelter open https://t.co/x1 www.example.org/a pic.twitter.com/Zz http…"
    assert clean_text(text, strip_urls=True) == "Shelter open"
    assert "https://t.co/x1" in clean_text(text, strip_urls=False)


def test_right_to_left_and_joiners_survive() -> None:
    arabic, hebrew, persian = "مساعدة عاجلة", "עזרה דחופה", "می\u200cخواهم"
    for text in (arabic, hebrew, persian):
        assert clean_text(text) == text
    # Bidi overrides can disguise text; they are removed, the letters stay.
    assert clean_text(f"\u202e{arabic}\u202c") == arabic


def test_very_long_text_is_cleaned_quickly() -> None:
    text = ("Flood &amp; rescue 😀 http://t.co/x " * 3000)[:100_000]
    started = time.perf_counter()
    cleaned = clean_text(text)
    assert time.perf_counter() - started < 5
    assert cleaned.startswith("Flood & rescue Flood") and "😀" not in cleaned


@pytest.mark.parametrize("encoding, original", [
    ("cp1252", "café “quoted” – €5"),
    ("latin-1", "naïve façade ±"),
    ("mac_roman", "Caf\u00e9 \u2022"),
])
def test_non_utf8_bytes_decode_without_error(encoding: str, original: str) -> None:
    text, fallback = decode_bytes(original.encode(encoding))
    assert fallback
    assert text.encode("utf-8")
    if encoding != "mac_roman":  # Mac-Roman bytes come out as their Windows-1252 letters
        assert text == original
    assert clean_text(text)


def test_utf8_bytes_are_untouched_and_bad_bytes_only_replaced_locally() -> None:
    assert decode_bytes("Ünïcödé ✓".encode()) == ("Ünïcödé ✓", False)
    text, fallback = decode_bytes("ok ✓ ".encode() + b"\x93x\x94 \x81")
    assert fallback and text == "ok ✓ “x” \x81"
    assert clean_text(text) == 'ok ✓ "x"'


class _Tags(HTMLParser):
    """An independent oracle: Python's HTML tokenizer reports any markup it finds."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.found.append(tag)

    def handle_endtag(self, tag) -> None:
        self.found.append(tag)

    def handle_comment(self, data) -> None:
        self.found.append("comment")


_FRAGMENTS = st.sampled_from([
    "&amp;", "&amp;lt;", "&#128512;", "&", "<", ">", "<b>", "</i>", "<a href='x'>", "<!--", "-->",
    "😀", "👨‍👩‍👧", "🇳🇵", "1️⃣", "\ufe0f", "\u200d", "\u202e", "\u0301", "\x00", "\x85", "\ud800",
    "\\", "\\n", '\\"', "n", "http://t.co/x", "https:", "//", "www.", "â€™", "‚Äô", "β€¦", "\u1f60",
    "2", "F", " ", "\n", "\t", "مساعدة", "e",
])
_TEXTS = st.one_of(st.text(), st.lists(st.one_of(_FRAGMENTS, st.text(max_size=3)), max_size=30)
                   .map("".join))


@settings(max_examples=400, deadline=None)
@given(_TEXTS, st.booleans())
def test_cleaner_properties(text: str, strip_urls: bool) -> None:
    cleaned = clean_text(text, strip_urls=strip_urls)
    assert clean_text(cleaned, strip_urls=strip_urls) == cleaned        # idempotent
    assert cleaned.encode("utf-8").decode("utf-8") == cleaned            # valid UTF-8
    assert emoji.emoji_count(cleaned) == 0
    oracle = _Tags()
    oracle.feed(cleaned)
    oracle.close()
    assert oracle.found == []
    assert cleaned == cleaned.strip() and "  " not in cleaned
