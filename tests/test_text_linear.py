"""The cleaner's cost grows linearly with hostile input (issue 16). For each input that used to
take quadratic time, cleaning 16 times as much must take well under 256 times as long (what
quadratic growth gives). Linear work measures 16 to about 45 here: a long string costs more
per character once it no longer fits the CPU caches. Ratios of one run, each the best of three,
never absolute times; the speed target itself is checked by bench/prepare_hostile.py."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from stages import text as cleaner

GROWTH = 16  # the larger input is this many times the smaller
BOUND = 100.0  # linear: 16 to ~45 measured; quadratic: ~256 (the old tag regex: 440 to 690)
# Characters in the smaller input: tens of nanoseconds a character for the regex steps; the
# emoji tokenizer costs microseconds, so those get less (the file takes about 2 seconds).
FAST, SLOW = 20_000, 1_500


def _growth(clean: Callable[[str], object], unit: str, n: int) -> float:
    def best(size: int) -> float:
        text = (unit * (size // len(unit) + 1))[:size]
        times = []
        for _ in range(3):
            started = time.perf_counter()
            clean(text)
            times.append(time.perf_counter() - started)
        return min(times)

    return best(GROWTH * n) / max(best(n), 1e-6)


def _whole(text: str) -> object:
    return cleaner._clean.__wrapped__(text, True, None)  # no cache, no length cap


@pytest.mark.parametrize(
    "name, clean, unit, n",
    [
        ("tags", cleaner._strip_tags, "<a", FAST),
        ("comments", cleaner._strip_tags, "<!--a>", FAST),
        ("open comments", cleaner._strip_tags, "<!--", FAST),
        ("nested entities", cleaner._unescape_entities, "&amp;", FAST),
        ("entities nested by `&`", cleaner._unescape_entities, "&&#35;35;", FAST // 4),
        (
            "backslashes",
            lambda t: cleaner._ESCAPED_CHAR.sub("", cleaner._ESCAPED_BREAK.sub("", t)),
            "\\",
            FAST,
        ),
        ("joined emoji", cleaner._replace_emoji, "\U0001f468\u200d", SLOW),
        ("emoji joined to letters", cleaner._replace_emoji, "\U0001f468\u200da", SLOW),
        ("stacked marks", lambda t: cleaner._tidy(t, set()), "\u0301\u0316", FAST),
        ("whole cleaner on tag soup", _whole, "<a", SLOW),
    ],
)
def test_cleaning_hostile_text_is_linear(
    name: str, clean: Callable[[str], object], unit: str, n: int
) -> None:
    assert _growth(clean, unit, n) < BOUND, name


def test_the_ratio_catches_quadratic_work() -> None:
    # Negative control: the tag stripping this replaced (a regular expression retried from
    # every `<`), on inputs small enough to stay quick.
    old_tag = re.compile(r"<!--.*?-->|<[!?][^>]*>|</?[A-Za-z][^>]*>", re.DOTALL)
    assert _growth(lambda t: old_tag.sub(" ", t), "<a", 500) > BOUND
