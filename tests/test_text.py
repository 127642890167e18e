"""The text cleaner: real damage from the corpora, each generated bad-input case, and
property tests (never raises, idempotent, valid UTF-8, no emoji, no tags)."""

from __future__ import annotations

import csv
import html
import re
import time
import unicodedata
from html.parser import HTMLParser
from pathlib import Path
from unittest import mock

import emoji
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages import text as cleaner
from stages.text import MAX_TEXT_CHARS, REPAIRS, clean_text, clean_text_explained, decode_bytes


def _crisismmd_texts(shared: Path) -> list[str]:
    path = shared / "crisismmd" / "task_humanitarian_text_img_agreed_lab_train.tsv"
    with path.open(encoding="utf-8", newline="") as fh:
        return [
            row["tweet_text"] for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]


def _crisis4_texts(shared: Path) -> list[str]:
    with (shared / "crisis4" / "crisis4.csv").open(encoding="utf-8", newline="") as fh:
        return [row["text"] for row in csv.DictReader(fh)]


@pytest.mark.parametrize(
    "damage, fixed",
    [
        ("â€™", "'"),  # Windows-1252 mojibake, CrisisMMD
        ("‚Äô", "'"),  # Mac-Roman mojibake, CrisisMMD
        ("â€¦", "…"),
    ],
)
def test_real_crisismmd_mojibake_is_repaired(shared_data: Path, damage: str, fixed: str) -> None:
    damaged = [t for t in _crisismmd_texts(shared_data) if damage in t]
    assert len(damaged) >= 5, f"expected real rows with {damage!r}"
    for text in damaged:
        cleaned, steps = clean_text_explained(text)
        assert damage not in cleaned and "mojibake" in steps
    assert any(fixed in clean_text(t) for t in damaged)


def test_real_crisis4_damage_is_repaired(shared_data: Path) -> None:
    texts = _crisis4_texts(shared_data)
    greek = [t for t in texts if "β€¦" in t]  # UTF-8 read as Windows-1253
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


@pytest.mark.parametrize(
    "raw, expected, step",
    [
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
    ],
)
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


@pytest.mark.parametrize(
    "encoding, original",
    [
        ("cp1252", "café “quoted” – €5"),
        ("latin-1", "naïve façade ±"),
        ("mac_roman", "Caf\u00e9 \u2022"),
    ],
)
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


_FRAGMENTS = st.sampled_from(
    [
        "&amp;",
        "&amp;lt;",
        "&#128512;",
        "&",
        "<",
        ">",
        "<b>",
        "</i>",
        "<a href='x'>",
        "<!--",
        "-->",
        "😀",
        "👨‍👩‍👧",
        "🇳🇵",
        "1️⃣",
        "\ufe0f",
        "\u200d",
        "\u202e",
        "\u0301",
        "\x00",
        "\x85",
        "\ud800",
        "\\",
        "\\n",
        '\\"',
        "n",
        "http://t.co/x",
        "https:",
        "//",
        "www.",
        "â€™",
        "‚Äô",
        "β€¦",
        "\u1f60",
        "2",
        "F",
        " ",
        "\n",
        "\t",
        "مساعدة",
        "e",
    ]
)
_TEXTS = st.one_of(
    st.text(), st.lists(st.one_of(_FRAGMENTS, st.text(max_size=3)), max_size=30).map("".join)
)


@settings(max_examples=400, deadline=None)
@given(_TEXTS, st.booleans())
def test_cleaner_properties(text: str, strip_urls: bool) -> None:
    cleaned = clean_text(text, strip_urls=strip_urls)
    assert clean_text(cleaned, strip_urls=strip_urls) == cleaned  # idempotent
    assert cleaned.encode("utf-8").decode("utf-8") == cleaned  # valid UTF-8
    assert emoji.emoji_count(cleaned) == 0
    oracle = _Tags()
    oracle.feed(cleaned)
    oracle.close()
    assert oracle.found == []
    assert cleaned == cleaned.strip() and "  " not in cleaned


# --- Non-Latin scripts -------------------------------------------------------------------


def _alphabet(*blocks: tuple[int, int]) -> list[str]:
    """Letters, marks and digits of the given blocks (no punctuation, symbols or format)."""
    return [
        chr(c)
        for lo, hi in blocks
        for c in range(lo, hi + 1)
        if unicodedata.category(chr(c))[:1] in "LM" or unicodedata.category(chr(c)) == "Nd"
    ]


_SCRIPTS = {
    "greek": _alphabet((0x0370, 0x03FF), (0x1F00, 0x1FFF)),
    "cyrillic": _alphabet((0x0400, 0x04FF)),
    "arabic": _alphabet((0x0600, 0x06FF)),
    "cjk": _alphabet((0x4E00, 0x9FFF)),
    "devanagari": _alphabet((0x0900, 0x097F)),
}
_SCRIPT_TEXTS = st.sampled_from(sorted(_SCRIPTS)).flatmap(
    lambda name: st.text(st.sampled_from(_SCRIPTS[name] + list("0123456789 ")), max_size=30)
)


@settings(max_examples=500, deadline=None)
@given(_SCRIPT_TEXTS)
def test_non_latin_scripts_survive(text: str) -> None:
    # Only the documented normalisations: NFC and collapsed whitespace (30 characters cannot
    # hold a run of more than 30 stacked marks, the one other thing that is cut).
    cleaned, steps = clean_text_explained(text)
    assert cleaned == unicodedata.normalize("NFC", " ".join(text.split()))
    assert not steps & REPAIRS, steps


def test_the_non_latin_property_can_fail() -> None:
    # Negative control: a generator that mixed in emoji would be caught by the same check.
    text = "Привет 😀"
    assert clean_text(text) != unicodedata.normalize("NFC", " ".join(text.split()))


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("ἀ4 ὠ2 test", "ἀ4 ὠ2 test"),  # was eaten whole: "test"
        ("ὠ2 ἀλλά ὠ5", "ὠ2 ἀλλά ὠ5"),  # Greek text: no lead is an emoji
        ("Καλημέρα ὠ2 flood", "Καλημέρα ὠ2 flood"),  # Greek letters elsewhere: Greek
        ("ὠ2 Привет", "ὠ2 Привет"),  # no Latin letter: no evidence of damage
        ("ἀ4 test", "ἀ4 test"),  # U+1F004 lies below the damaged leads
        ("Mora \u1f605 Story", "Mora Story"),  # CrisisMMD damage, still repaired
        ("Puerto Rico\u1f1f5\u1f1f7 now", "Puerto Rico now"),  # a damaged flag
    ],
)
def test_damaged_emoji_only_in_latin_text(raw: str, expected: str) -> None:
    cleaned, steps = clean_text_explained(raw)
    assert cleaned == expected
    assert ("damaged_emoji" in steps) == (cleaned != raw)


# --- Length cap and hostile input -------------------------------------------------------


def test_long_text_is_truncated_and_recorded() -> None:
    assert "truncated" in REPAIRS and "stacked_marks" in REPAIRS
    text = "flood " * (MAX_TEXT_CHARS // 6 + 100)
    cleaned, steps = clean_text_explained(text)
    assert len(cleaned) <= MAX_TEXT_CHARS and cleaned.startswith("flood flood")
    assert "truncated" in steps
    assert "truncated" not in clean_text_explained(text[:MAX_TEXT_CHARS])[1]
    assert clean_text_explained(cleaned) == (cleaned, frozenset())
    uncapped, steps = clean_text_explained(text, max_chars=None)
    assert len(uncapped) > MAX_TEXT_CHARS and "truncated" not in steps
    # Normalising can lengthen a text (a ligature becomes three letters): still capped, and
    # cleaning the result again changes nothing.
    ligatures = "\ufb03" * MAX_TEXT_CHARS
    cleaned, steps = clean_text_explained(ligatures)
    assert cleaned == ("ffi" * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS] and "truncated" in steps
    assert clean_text(cleaned) == cleaned


@pytest.mark.parametrize(
    "raw, expected, step",
    [
        ("<a" * 5000, "<a" * 5000, None),  # no `>`: not a tag, kept
        ("<!--" * 2000 + "x", "<!--" * 2000 + "x", None),
        ("<!--a>" * 2000 + "ok", "ok", "html_tags"),
        ("<a" * 5000 + ">ok", "ok", "html_tags"),
        ("<b>x<!-- <i> -->y</b", "x y</b", "html_tags"),
        ("&" + "amp;" * 5000 + "lt;b&gt;", "", "html_tags"),  # nested escaping, undone in full
        ("&#" + "1" * 5000 + "; x", "\ufffd x", "html_entities"),  # raised ValueError before
        ("&#" + "0" * 5000 + "38; x", "& x", "html_entities"),
        ("&#" + "0" * 5000 + "; x", "\ufffd x", "html_entities"),
        ("\\" * 5000 + "x", "\\" * 5000 + "x", None),
        ("\\" * 5000 + "n x", "x", "literal_escapes"),
        (
            "a" + "\u0301\u0316" * 5000,
            unicodedata.normalize("NFC", "a" + "\u0301\u0316" * 15),
            "stacked_marks",
        ),
        ("flood " + "\U0001f468\u200d" * 5000 + "help", "flood help", "emoji"),
        ("flood " + "\U0001f468\u200da" * 3000, "flood" + " a" * 3000, "emoji"),
    ],
)
def test_hostile_inputs(raw: str, expected: str, step: str | None) -> None:
    cleaned, steps = clean_text_explained(raw, max_chars=None)
    assert cleaned == expected
    assert (step in steps) if step else not steps & REPAIRS
    assert clean_text_explained(cleaned, max_chars=None)[0] == cleaned


def test_entities_nested_deeper_than_the_passes_are_defused() -> None:
    # `&&&#35;35;35;` needs one unescape per `&`: past _ENTITY_PASSES the rest is defused.
    deep = "&" * 50 + "&#35;" + "35;" * 50
    cleaned, steps = clean_text_explained(deep)
    assert "html_entities" in steps and html.unescape(cleaned) == cleaned
    assert clean_text(cleaned) == cleaned
    shallow = "&" * 2 + "&#35;" + "35;" * 2  # within the passes: decoded in full
    assert clean_text(shallow) == "#"


_OLD_TAG = re.compile(r"<!--.*?-->|<[!?][^>]*>|</?[A-Za-z][^>]*>", re.DOTALL)


def _old_strip_tags(text: str) -> str:
    while (stripped := _OLD_TAG.sub(" ", text)) != text:
        text = stripped
    return text


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["<", ">", "a", "!", "?", "/", "-", "--", "<!--", "-->", " ", "</b", "<!", "x>"]
        ),
        max_size=25,
    ).map("".join)
)
def test_tag_scan_matches_the_regular_expression(text: str) -> None:
    assert cleaner._strip_tags(text) == _old_strip_tags(text)


_EMOJI_BITS = st.sampled_from(
    [
        "\U0001f468",
        "\U0001f469",
        "\U0001f467",
        "\u200d",
        "\U0001f3fd",
        "\U0001f9b0",
        "\U0001f1f3",
        "\U0001f1f5",
        "1",
        "#",
        "\u20e3",
        "\u2764",
        "\U0001f525",
        "\U0001f3f4",
        "\U000e0067",
        "\U000e007f",
        "a",
        " ",
        "\u0915",
        "\u2640",
        "\u27a1",
        "\u00a9",
        "\U0001f91d",
        "\U0001f9d1",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_EMOJI_BITS, max_size=30).map("".join))
def test_chunked_emoji_removal_matches_the_library(text: str) -> None:
    # Chunks of one character: the text is cut at every place the cleaner deems safe.
    with (
        mock.patch.object(cleaner, "_EMOJI_CHUNK", 1),
        mock.patch.object(cleaner, "_EMOJI_TANGLE", re.compile(r"(?!)")),
    ):
        assert cleaner._replace_emoji(text) == emoji.replace_emoji(text, replace=" ")


def test_emoji_tangles_lose_only_emoji() -> None:
    tangle = "\u200d\U0001f3fb\u200d\u20e3" * 100
    assert cleaner._replace_emoji("ok " + tangle + " go").split() == ["ok", "go"]
