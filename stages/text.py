"""Cleaning post text: the same function serves the prepare stage and prediction on new posts.

`clean_text(text, strip_urls=True)` returns the cleaned string; `clean_text_explained` also
returns which steps changed it, so prepare can count every repair. The cleaner is total (never
raises on any `str`), idempotent, and its output is valid UTF-8 without emoji, HTML tags or
control characters.
"""
from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache
from itertools import chain

import emoji
import ftfy
import ftfy.fixes

# Steps that fix damage done to the text on its way to us (the ledger marks such rows
# `repaired`); the other steps are cleaning, counted but routine: emoji, urls, and
# normalised (whitespace, NFC, full-width forms, ligatures, curly quotes).
REPAIRS = frozenset({"mojibake", "damaged_emoji", "html_entities", "html_tags",
                     "control_chars", "literal_escapes"})

# ftfy's own HTML unescaping is conservative; we unescape ourselves to count it separately.
# Quotes are uncurled only after the word-by-word pass: uncurling first breaks mojibake such
# as `‚Äò` (the `‚` is a curly quote to ftfy) before it can be decoded.
_FTFY = ftfy.TextFixerConfig(unescape_html=False, uncurl_quotes=False)
_SPACES = re.compile(r"([ \t\r\n]+)")  # not NBSP: it is part of some mojibake
# A no-break space read as Windows-1252 (`Â` + NBSP) or Mac-Roman (`¬†`, and `¬` + NBSP in
# the CrisisMMD transcription); ftfy leaves these alone when the rest of a text is clean.
_NBSP_MOJIBAKE = re.compile("Â\xa0|¬[\xa0†]")
# What is left after ftfy: single 3- and 4-byte UTF-8 sequences read as Windows-1252 (with
# the 5 bytes it leaves undefined as C1 controls), e.g. `á½\xa0` (the damaged-emoji lead
# U+1F60) or `â¬†`. Replaced only when the bytes are valid UTF-8.
_CP1252_BYTE = {bytes([b]).decode("cp1252", "ignore") or chr(b): b for b in range(0x80, 0x100)}
_CONT = "".join(re.escape(ch) for ch, b in _CP1252_BYTE.items() if b < 0xC0)
_LOCAL_MOJIBAKE = re.compile(f"[\u00e0-\u00ef][{_CONT}]{{2}}|[\u00f0-\u00f4][{_CONT}]{{3}}")
_FTFY_DECODING = {"encode", "decode", "transcode"}
_FTFY_MOJIBAKE_FIXES = {"decode_inconsistent_utf8", "fix_c1_controls", "restore_byte_a0",
                        "replace_lossy_sequences", "fix_surrogates"}
_FTFY_OTHER_STEPS = {"remove_control_chars": "control_chars",
                     "remove_terminal_escapes": "control_chars"}

# MediaEval dev posts write line breaks as the two characters `\n`, quotes as `\"` and some
# URLs with JSON-escaped slashes (`http:\/\/t.co`). Runs of backslashes are taken whole so a
# second pass finds nothing left to change.
_ESCAPED_BREAK = re.compile(r"\\+n")
_ESCAPED_CHAR = re.compile(r"\\+([\"'/])")
# CrisisMMD stores many emoji damaged: U+1F602 became U+1F60 followed by the digit "2".
_DAMAGED_EMOJI = re.compile(r"[\u1f00-\u1fff][0-9A-F]")
# Comments, declarations, processing instructions and tags as an HTML tokenizer sees them:
# `<` or `</`, a letter, then anything up to the next `>`.
_TAG = re.compile(r"<!--.*?-->|<[!?][^>]*>|</?[A-Za-z][^>]*>", re.DOTALL)
_URL = re.compile(r"(?:https?:\s*/\s*/|www\.|pic\.twitter\.com/)\S*|\bhttps?\W*…", re.IGNORECASE)


def _invisible_chars() -> str:
    # Format characters (soft hyphen, bidi overrides, BOM, zero-width space...) are invisible
    # and let text spoof its direction; ZWNJ/ZWJ stay because Persian and Indic words need them.
    # Emoji presentation selectors stay orphaned once emoji are gone, so they go too.
    codes = chain(range(0x30000), range(0xE0000, 0xE1000))
    keep = {0x200C, 0x200D}
    fmt = [chr(c) for c in codes if unicodedata.category(chr(c)) == "Cf" and c not in keep]
    return "".join(fmt) + "\ufe0e\ufe0f"


# C0/C1 controls that separate words become spaces; the rest, format characters and lone
# surrogates (which cannot be written as UTF-8) are deleted.
_CONTROLS = {c: " " for c in (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x85)}
_CONTROLS.update({c: None for c in chain(range(0x00, 0x20), range(0x7F, 0xA0))
                  if c not in _CONTROLS})
_CONTROLS.update({ord(ch): None for ch in _invisible_chars()})
_CONTROLS.update({c: None for c in range(0xD800, 0xE000)})


def _decoding(steps: list | None) -> bool:
    return any(action in _FTFY_DECODING or param in _FTFY_MOJIBAKE_FIXES
               for action, param in steps or [])


def _fix_mojibake(text: str, seen: set[str]) -> str:
    """ftfy's repairs, with the names of the steps that changed something added to `seen`."""
    text, n_spaces = _NBSP_MOJIBAKE.subn("\xa0", text)
    fixed, steps = ftfy.fix_and_explain(text, _FTFY)
    damaged = _decoding(steps) or n_spaces > 0
    seen.update(_FTFY_OTHER_STEPS.get(param, "normalised") for action, param in steps or []
                if action not in _FTFY_DECODING and param not in _FTFY_MOJIBAKE_FIXES)
    if not fixed.isascii():
        # ftfy decodes a text as a whole and gives up when one spot does not fit (CrisisMMD has
        # Mac-Roman rows with a stray no-break space); then each word gets its own try.
        words = _SPACES.split(fixed)
        for i, word in enumerate(words):
            if not word.isascii():
                better, word_steps = ftfy.fix_and_explain(word, _FTFY)
                if _decoding(word_steps):
                    words[i], damaged = better, True
        fixed = "".join(words)
    fixed, n_local = _LOCAL_MOJIBAKE.subn(_decode_local, fixed)
    if damaged or n_local:
        seen.add("mojibake")
    return fixed


def _decode_local(match: re.Match[str]) -> str:
    try:
        return bytes(_CP1252_BYTE[ch] for ch in match[0]).decode("utf-8")
    except UnicodeDecodeError:
        return match[0]


def _restore_emoji(match: re.Match[str]) -> str:
    # The restored emoji would be removed anyway, so it goes now (with a regional-indicator
    # half of a flag, which the emoji library does not count on its own).
    code = int(f"{ord(match[0][0]):X}{match[0][1]}", 16)
    return " " if emoji.is_emoji(chr(code)) or 0x1F1E6 <= code <= 0x1F1FF else match[0]


def _unescape_entities(text: str) -> str:
    # Tweets are often escaped twice (`&amp;amp;`); each pass shortens the text, so this ends.
    while (unescaped := html.unescape(text)) != text:
        text = unescaped
    return text


def _strip_tags(text: str) -> str:
    while (stripped := _TAG.sub(" ", text)) != text:
        text = stripped
    return text


def _one_pass(text: str, strip_urls: bool, steps: set[str]) -> str:
    def step(name: str, new: str, old: str) -> str:
        if new != old:
            steps.add(name)
        return new

    text = step("literal_escapes", _ESCAPED_CHAR.sub(r"\1", _ESCAPED_BREAK.sub(" ", text)), text)
    fixed = _fix_mojibake(text, steps)  # before whitespace: mojibake hides in odd spaces
    text = step("normalised", _tidy(ftfy.fixes.uncurl_quotes(fixed)), fixed)
    text = step("damaged_emoji", _DAMAGED_EMOJI.sub(_restore_emoji, text), text)
    text = step("html_entities", _unescape_entities(text), text)
    text = step("control_chars", text.translate(_CONTROLS), text)
    text = step("emoji", emoji.replace_emoji(text, replace=" "), text)
    text = step("html_tags", _strip_tags(text), text)
    if strip_urls:
        text = step("urls", _URL.sub(" ", text), text)
    return _tidy(text)  # closes the gaps the removals left; not counted as a step of its own


def _tidy(text: str) -> str:
    return unicodedata.normalize("NFC", " ".join(text.split()))


@lru_cache(maxsize=65536)
def _clean(text: str, strip_urls: bool) -> tuple[str, frozenset[str]]:
    steps: set[str] = set()
    # A step can expose work for an earlier one (removing an emoji can join `<` and `b>`),
    # so repeat to a fixed point; that is what makes the cleaner idempotent.
    for _ in range(8):
        cleaned = _one_pass(text, strip_urls, steps)
        if cleaned == text:
            break
        text = cleaned
    return text, frozenset(steps)


def clean_text_explained(text: str, strip_urls: bool = True) -> tuple[str, frozenset[str]]:
    """Cleaned text and the names of the steps that changed it (see REPAIRS)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    return _clean(text, bool(strip_urls))


def clean_text(text: str, strip_urls: bool = True) -> str:
    """Repair encoding damage, unescape HTML, strip tags, emoji, control chars and
    (optionally) URLs, collapse whitespace and normalise to NFC."""
    return clean_text_explained(text, strip_urls)[0]


def decode_bytes(raw: bytes) -> tuple[str, bool]:
    """Decode bytes as UTF-8; bytes that are not UTF-8 are read as Windows-1252 (the five
    bytes it leaves undefined as Latin-1). Returns the text and whether the fallback was used.

    Latin-1 and Mac-Roman input therefore never fails: Latin-1 letters come out right,
    Mac-Roman ones as the Windows-1252 letters of the same bytes.
    """
    return restore_undecodable(raw.decode("utf-8", errors="surrogateescape"))


def restore_undecodable(text: str) -> tuple[str, bool]:
    """Replace the lone surrogates left by `errors="surrogateescape"` with the Windows-1252
    reading of those bytes, keeping every valid UTF-8 sequence as it was."""
    if not any("\udc80" <= ch <= "\udcff" for ch in text):
        return text, False
    out = []
    for ch in text:
        if "\udc80" <= ch <= "\udcff":
            byte = bytes([ord(ch) - 0xDC00])
            try:
                out.append(byte.decode("cp1252"))
            except UnicodeDecodeError:
                out.append(byte.decode("latin-1"))
        else:
            out.append(ch)
    return "".join(out), True
