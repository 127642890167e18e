"""Leak-free grouping and group splits: near-duplicate images and repeated texts stay on one
side, short captions and the white dummy never chain posts, shares are met for any value."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from stages import groups
from stages import split as splitting


def _variants(make_image: Callable[..., Path], tmp_path: Path) -> dict[str, Path]:
    """A textured picture, a resized + brightened + re-encoded copy, a captioned (cropped)
    copy, and an unrelated picture."""
    # Smooth like a photo (a 6x6 grid of random colours, interpolated): pixel noise would
    # make any crop a different picture to a difference hash.
    original = make_image("orig.png", (6, 6), noise=True)
    base = Image.open(original).convert("RGB").resize((192, 192), Image.Resampling.BILINEAR)
    paths = {"orig": tmp_path / "a.jpg", "copy": tmp_path / "b.jpg", "crop": tmp_path / "c.jpg"}
    base.save(paths["orig"], quality=95)
    ImageEnhance.Brightness(base.resize((150, 150))).enhance(1.15).save(paths["copy"], quality=60)
    base.crop((6, 6, 186, 186)).save(paths["crop"], quality=80)
    other = Image.open(make_image("other.png", (6, 6), noise=True)).convert("RGB")
    paths["other"] = tmp_path / "d.jpg"
    other.resize((192, 192), Image.Resampling.BILINEAR).save(paths["other"])
    return paths


def test_near_duplicates_group_and_unrelated_do_not(make_image, tmp_path: Path) -> None:
    paths = _variants(make_image, tmp_path)
    hashes = {name: groups.image_hash(p) for name, p in paths.items()}
    names = list(hashes)
    pairs = {
        (names[a], names[b]) for a, b in groups.near_pairs(np.array(list(hashes.values())), 30)
    }
    assert {("orig", "copy"), ("orig", "crop"), ("copy", "crop")} <= pairs
    assert not {p for p in pairs if "other" in p}
    assert groups.near_pairs(np.array(list(hashes.values())), -1) == []  # off: none


def test_group_rows_relations() -> None:
    rng = np.random.default_rng(0)
    h = {d: rng.integers(0, 2, 256).astype(bool) for d in "abcd"}  # ~128 bits apart
    h["c"] = h["a"].copy()
    h["c"][:20] = ~h["c"][:20]  # 20 bits from a: a near duplicate
    texts = [
        "flood water rising in the city",
        "RT @x: Flood water rising in the city! http://t.co/1",
        "#sandy",
        "#sandy",
        "",
        "",
        "one two three four five",
        "other post about nothing",
    ]
    digests = ["a", "b", "DUMMY", "d", "DUMMY", "DUMMY", "c", "b"]
    found = groups.group_rows(digests, texts, [None] * 8, "DUMMY", h, 30, 4, by_event=False)
    g = found.group
    assert g[0] == g[1]  # same text (retweet): one group
    assert g[1] == g[7]  # same image b
    assert g[6] == g[0]  # c is a near duplicate of a
    assert g[2] != g[3]  # "#sandy" is too short to link
    assert g[4] != g[5] and g[2] != g[4]  # the dummy never links
    assert found.merged == {"same_image": 1, "near_duplicate_image": 1, "same_text": 1}
    assert found.largest == 4 and found.count == 5
    loose = groups.group_rows(digests, texts, [None] * 8, "DUMMY", h, -1, 100, by_event=False)
    assert loose.count == 7  # negative control: only the same image b links


def test_events_group_when_held_out_by_event() -> None:
    events = ["sandy", "sandy", "nepal", None]
    found = groups.group_rows(
        ["DUMMY"] * 4, ["a", "b", "c", "d"], events, "DUMMY", {}, 30, 4, by_event=True
    )
    assert found.group[0] == found.group[1] != found.group[2] != found.group[3]


@pytest.mark.parametrize("share", [0.1, 0.2, 0.3, 0.4, 0.6, 0.9])
def test_holdout_hits_any_share(share: float) -> None:
    rng = np.random.default_rng(0)
    sizes = np.concatenate([[400], rng.integers(1, 30, 400)])  # one giant group, many small
    groups_ = np.repeat(np.arange(len(sizes)), sizes).astype(str)
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, len(sizes))][groups_.astype(int)]
    held = splitting.holdout(labels, groups_, share, seed=1)
    assert abs(held.mean() - share) <= 0.02
    for c in "abc":
        assert abs(held[labels == c].mean() - share) <= 0.03
    assert pd.Series(held).groupby(groups_).nunique().max() == 1  # groups are never cut


def test_fixed_split_leaks_are_dropped_or_kept() -> None:
    labels = ["x"] * 6
    grp = ["g1", "g1", "g2", "g2", "g3", "g4"]
    fixed = ["train", "test", "val", "test", None, "val"]
    split, leaked = splitting.assign_splits(labels, grp, fixed, 0.5, 0.5, 0, "drop")
    assert leaked.tolist() == [False, True, False, True, False, False]
    assert split[4] == "train" or split[4] == "test"
    _, kept = splitting.assign_splits(labels, grp, fixed, 0.5, 0.5, 0, "keep")
    assert not kept.any()


def test_normalise_text() -> None:
    assert groups.normalise_text("RT @abc: Flood in #NYC!! http://t.co/x") == "flood in nyc"
    assert groups.normalise_text("Flood in NYC") == "flood in nyc"
