"""Cleaning post text: the same function serves the prepare stage and prediction on new posts.

`clean_text(text, strip_urls=True)` returns the cleaned string; `clean_text_explained` also
returns which steps changed it, so prepare can count every repair. The cleaner is total (never
raises on any `str`), idempotent, and its output is valid UTF-8 without emoji, HTML tags or
control characters. Its cost is linear in the length of the input on every path, hostile input
included (long runs of `<`, nested entities, backslashes, joined emoji, stacked combining marks):
each step is a single left-to-right scan or a bounded number of them, and a text longer than
MAX_TEXT_CHARS is cut to that length before any of them runs.
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
# `truncated` and `stacked_marks` fix no damage but drop characters, so they are recorded too.
REPAIRS = frozenset(
    {
        "mojibake",
        "damaged_emoji",
        "html_entities",
        "html_tags",
        "control_chars",
        "literal_escapes",
        "truncated",
        "stacked_marks",
    }
)

# The longest post in our corpora has 324 characters (tweets: 280) and the text encoders read a
# few hundred tokens at most, so nothing real comes near this; it bounds the work one hostile
# field can cause (sources.py accepts fields of up to 128 MB) while keeping any long post whole.
MAX_TEXT_CHARS = 20_000

# ftfy's own HTML unescaping is conservative; we unescape ourselves to count it separately.
# Quotes are uncurled only after the word-by-word pass: uncurling first breaks mojibake such
# as `‚Äò` (the `‚` is a curly quote to ftfy) before it can be decoded.
# NFC is left to _tidy, which first cuts runs of stacked marks (decoding can create them).
_FTFY = ftfy.TextFixerConfig(unescape_html=False, uncurl_quotes=False, normalization=None)
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
_FTFY_MOJIBAKE_FIXES = {
    "decode_inconsistent_utf8",
    "fix_c1_controls",
    "restore_byte_a0",
    "replace_lossy_sequences",
    "fix_surrogates",
}
_FTFY_OTHER_STEPS = {
    "remove_control_chars": "control_chars",
    "remove_terminal_escapes": "control_chars",
}

# MediaEval dev posts write line breaks as the two characters `\n`, quotes as `\"` and some
# URLs with JSON-escaped slashes (`http:\/\/t.co`). Runs of backslashes are taken whole so a
# second pass finds nothing left to change; the lookbehind makes a run be tried once, from its
# start, instead of from each of its backslashes (which took quadratic time on long runs).
_ESCAPED_BREAK = re.compile(r"(?<!\\)\\+n")
_ESCAPED_CHAR = re.compile(r"(?<!\\)\\+([\"'/])")
# CrisisMMD stores many emoji damaged: U+1F602 became U+1F60 followed by the digit "2". Those
# leads are Greek Extended letters too (U+1F60 is omega with psili), so a lead and a hex digit
# count as a damaged emoji only in a text that is otherwise Latin script: it has a Latin letter
# and no Greek letter besides such pairs. Leads below U+1F1E (mahjong tiles, cards, enclosed
# letters: `ἀ4` would be U+1F004) never occur in CrisisMMD and always stay Greek; the leads
# of regional indicators (flag halves, not emoji on their own to the library) are added.
_DAMAGED_LEADS = "".join(
    sorted(
        {chr(ord(e) >> 4) for e in emoji.EMOJI_DATA if len(e) == 1 and ord(e) >= 0x1F1E0}
        | {"\u1f1e", "\u1f1f"}
    )
)
_DAMAGED_EMOJI = re.compile(f"[{_DAMAGED_LEADS}][0-9A-F]")
_GREEK = re.compile("[\u0370-\u03ff\u1f00-\u1fff]")
_LATIN = re.compile("[A-Za-z\u00c0-\u024f]")
# Comments, declarations, processing instructions and tags as an HTML tokenizer sees them:
# `<!--` up to `-->`, else `<!` or `<?`, or `<` or `</` and a letter, up to the next `>`.
_TAG_START = re.compile(r"<(?:!--|[!?]|/?[A-Za-z])")
# Entities: tweets are escaped twice or three times (`&amp;amp;`); a chain of escaped `&` is
# undone in one step, and deeper nesting than _ENTITY_PASSES unescapes is hostile.
_AMP_CHAIN = re.compile(r"&(?:amp;|AMP;|#0*38;|#[xX]0*26;)+")
_ENTITY_PASSES = 4
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")  # html's own
# html.unescape raises on decimal references of more than 4,300 digits (Python's int limit):
# leading zeros are dropped, and 8 or more digits are above U+10FFFF, which decodes to U+FFFD.
_DECIMAL_REF = re.compile(r"&#0*([0-9]+)")
_URL = re.compile(r"(?:https?:\s*/\s*/|www\.|pic\.twitter\.com/)\S*|\bhttps?\W*…", re.IGNORECASE)


def _invisible_chars() -> str:
    # Format characters (soft hyphen, bidi overrides, BOM, zero-width space...) are invisible
    # and let text spoof its direction; ZWNJ/ZWJ stay because Persian and Indic words need them.
    # Emoji presentation selectors stay orphaned once emoji are gone, so they go too.
    codes = chain(range(0x30000), range(0xE0000, 0xE1000))
    keep = {0x200C, 0x200D}
    fmt = [chr(c) for c in codes if unicodedata.category(chr(c)) == "Cf" and c not in keep]
    return "".join(fmt) + "\ufe0e\ufe0f"


def _nonstarters() -> str:
    # Characters whose canonical decomposition starts with a combining mark (class > 0).
    def nonstarter(ch: str) -> bool:
        return bool(
            unicodedata.combining(ch)
            or unicodedata.decomposition(ch)
            and unicodedata.combining(unicodedata.normalize("NFD", ch)[0])
        )

    return "".join(filter(nonstarter, map(chr, range(0x30000))))


# Unicode's stream-safe limit (UAX #15): no real text stacks more than 30 combining marks on a
# letter, and NFC reorders each run with a quadratic sort, so longer runs are cut to 30.
_MARKS = re.escape(_nonstarters())
_MARK_RUN = re.compile(f"([{_MARKS}]{{30}})[{_MARKS}]+")

# The emoji library's tokenizer keeps the joiners it skips in a list and tests membership for
# every character, which is quadratic in the number of joined emoji; so long texts are handed
# to it in chunks, cut where no emoji sequence can span the cut: before a character that never
# continues a sequence (a joiner, selector, skin tone, keycap, tag or regional indicator), and
# not between a joiner and a character that can start an emoji.
_ZWJ = "\u200d"
_EMOJI_STARTS = {seq[0] for seq in emoji.EMOJI_DATA}
_EMOJI_CONTINUES = (
    {b for seq in emoji.EMOJI_DATA for a, b in zip(seq, seq[1:]) if a != _ZWJ}
    | {
        seq
        for seq, data in emoji.EMOJI_DATA.items()
        if len(seq) == 1 and data["status"] == emoji.unicode_codes.STATUS["component"]
    }
    | {_ZWJ, "\ufe0e", "\ufe0f", "\u20e3"}
    | set(map(chr, range(0xE0020, 0xE0080)))
)  # tags (subdivision flags)
_EMOJI_CONT = "".join(map(re.escape, sorted(_EMOJI_CONTINUES)))
_START_ONLY = "".join(map(re.escape, sorted(_EMOJI_STARTS - _EMOJI_CONTINUES)))
_EMOJI_CUT = re.compile(f"(?<!{_ZWJ})[^{_EMOJI_CONT}]|(?<={_ZWJ})[^{_EMOJI_CONT}{_START_ONLY}]")
_EMOJI_CHUNK = 64
# More than 64 characters with no such cut is no real emoji (the longest sequence has 10): all
# its emoji characters go at once.
_EMOJI_TANGLE = re.compile(f"(?s).(?:[{_EMOJI_CONT}]|(?<={_ZWJ})[{_START_ONLY}]){{64,}}")
_EMOJI_CHARS = str.maketrans(dict.fromkeys(map(ord, _EMOJI_STARTS | _EMOJI_CONTINUES), " "))


# C0/C1 controls that separate words become spaces; the rest, format characters and lone
# surrogates (which cannot be written as UTF-8) are deleted.
_CONTROLS = {c: " " for c in (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x85)}
_CONTROLS.update(
    {c: None for c in chain(range(0x00, 0x20), range(0x7F, 0xA0)) if c not in _CONTROLS}
)
_CONTROLS.update({ord(ch): None for ch in _invisible_chars()})
_CONTROLS.update({c: None for c in range(0xD800, 0xE000)})


def _decoding(steps: list | None) -> bool:
    return any(
        action in _FTFY_DECODING or param in _FTFY_MOJIBAKE_FIXES for action, param in steps or []
    )


def _fix_mojibake(text: str, seen: set[str]) -> str:
    """ftfy's repairs, with the names of the steps that changed something added to `seen`."""
    text, n_spaces = _NBSP_MOJIBAKE.subn("\xa0", text)
    fixed, steps = ftfy.fix_and_explain(text, _FTFY)
    damaged = _decoding(steps) or n_spaces > 0
    seen.update(
        _FTFY_OTHER_STEPS.get(param, "normalised")
        for action, param in steps or []
        if action not in _FTFY_DECODING and param not in _FTFY_MOJIBAKE_FIXES
    )
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


def _restore_damaged_emoji(text: str) -> str:
    rest = _DAMAGED_EMOJI.sub(" ", text)
    if rest == text or not _LATIN.search(rest) or _GREEK.search(rest):
        return text
    return _DAMAGED_EMOJI.sub(_restore_emoji, text)


def _unescape_entities(text: str) -> str:
    for _ in range(_ENTITY_PASSES):
        text = _AMP_CHAIN.sub("&", _DECIMAL_REF.sub(_short_decimal, text))
        if (unescaped := html.unescape(text)) == text:
            return text
        text = unescaped
    # Still nested after that many passes: hostile input. A space after each `&` that would
    # still decode leaves a text that html.unescape no longer changes, so cleaning stays
    # idempotent without a pass per level of nesting.
    return _CHARREF.sub(_defuse, _DECIMAL_REF.sub(_short_decimal, text))


def _short_decimal(match: re.Match[str]) -> str:
    return "&#" + (match[1] if len(match[1]) < 8 else "1114112")


def _defuse(match: re.Match[str]) -> str:
    return match[0] if html.unescape(match[0]) == match[0] else "& " + match[0][1:]


def _strip_tags(text: str) -> str:
    """Replace each tag or comment (see _TAG_START) with a space, in one scan. The next `>`
    and `-->` are looked up only when the last lookup lies behind, and the scan stops at the
    first start with no `>` after it, so no part of the text is read more than twice (a
    regular expression retried from every `<` of `<a<a<a...` took quadratic time)."""
    parts, pos, gt, close = [], 0, 0, 0
    for match in _TAG_START.finditer(text):
        start = match.start()
        if start < pos:  # inside the tag just removed
            continue
        end = -1
        if match[0] == "<!--":
            if -1 < close < start + 4:
                close = text.find("-->", start + 4)
            end = close + 3 if close != -1 else -1
        if end == -1:
            if -1 < gt < start + 2:
                gt = text.find(">", start + 2)
            if gt == -1:  # no `>` left: nothing after this is a tag
                break
            end = gt + 1
        parts += [text[pos:start], " "]
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def _replace_emoji(text: str) -> str:
    text = _EMOJI_TANGLE.sub(lambda m: m[0].translate(_EMOJI_CHARS), text)
    parts, start = [], 0
    while start < len(text):
        cut = _EMOJI_CUT.search(text, start + _EMOJI_CHUNK)
        end = cut.start() if cut else len(text)
        parts.append(emoji.replace_emoji(text[start:end], replace=" "))
        start = end
    return "".join(parts)


def _one_pass(text: str, strip_urls: bool, max_chars: int | None, steps: set[str]) -> str:
    def step(name: str, new: str, old: str) -> str:
        if new != old:
            steps.add(name)
        return new

    if max_chars is not None:  # normalisation can lengthen a text that was cut before
        text = step("truncated", text[:max_chars], text)
    text = step("literal_escapes", _ESCAPED_CHAR.sub(r"\1", _ESCAPED_BREAK.sub(" ", text)), text)
    fixed = _fix_mojibake(text, steps)  # before whitespace: mojibake hides in odd spaces
    text = step("normalised", _tidy(ftfy.fixes.uncurl_quotes(fixed), steps), fixed)
    text = step("damaged_emoji", _restore_damaged_emoji(text), text)
    text = step("html_entities", _unescape_entities(text), text)
    text = step("control_chars", text.translate(_CONTROLS), text)
    text = step("emoji", _replace_emoji(text), text)
    text = step("html_tags", _strip_tags(text), text)
    if strip_urls:
        text = step("urls", _URL.sub(" ", text), text)
    return _tidy(text, steps)  # closes the gaps the removals left; not a step of its own


def _tidy(text: str, steps: set[str]) -> str:
    capped = _MARK_RUN.sub(r"\1", text)
    if capped != text:
        steps.add("stacked_marks")
    return unicodedata.normalize("NFC", " ".join(capped.split()))


@lru_cache(maxsize=65536)
def _clean(text: str, strip_urls: bool, max_chars: int | None) -> tuple[str, frozenset[str]]:
    steps: set[str] = set()
    # A step can expose work for an earlier one (removing an emoji can join `<` and `b>`),
    # so repeat to a fixed point; that is what makes the cleaner idempotent.
    for _ in range(8):
        cleaned = _one_pass(text, strip_urls, max_chars, steps)
        if cleaned == text:
            break
        text = cleaned
    return text, frozenset(steps)


def clean_text_explained(
    text: str, strip_urls: bool = True, max_chars: int | None = MAX_TEXT_CHARS
) -> tuple[str, frozenset[str]]:
    """Cleaned text and the names of the steps that changed it (see REPAIRS). A text longer
    than `max_chars` is cut to that length first (step `truncated`); None turns the cap off,
    for measuring the cleaner itself."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    cut = max_chars is not None and len(text) > max_chars
    if cut:  # before the cache too, which would otherwise keep the whole field as its key
        text = text[:max_chars]
    cleaned, steps = _clean(text, bool(strip_urls), max_chars)
    return cleaned, (steps | {"truncated"} if cut else steps)


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
