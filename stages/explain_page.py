"""reports/explain/index.html: explained test posts, readable offline.

One self-contained file: no script, no font or stylesheet fetched, images inline as data: URI
PNGs. Every piece of post text goes through html.escape. Words are shaded by their score
(orange: pushed towards the predicted class, blue: against it); the image is the crop the
encoder sees with its region map over it in the same colours.
"""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

import numpy as np
from PIL import Image

from stages.attribution import Explanation

FOR, AGAINST = (230, 120, 0), (30, 110, 220)
SHOWN_SIDE = 192  # px of the image on the page
STYLE = """
body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}
.post{border:1px solid #ccc;border-radius:6px;padding:.6em;margin:.8em 0;display:flex;gap:1em}
.post.wrong{border-color:#c33}.words{line-height:1.9}.words span{padding:1px 2px;border-radius:3px}
.noimg{width:192px;height:120px;border:1px dashed #999;display:flex;align-items:center;
justify-content:center;color:#666}table{border-collapse:collapse}td,th{padding:1px 6px}
.bar{display:inline-block;height:.7em;background:#888}.share{font-size:.9em;color:#444}
"""


def colour(score: float, scale: float) -> str:
    if scale <= 0 or score == 0:
        return "transparent"
    r, g, b = FOR if score > 0 else AGAINST
    return f"rgba({r},{g},{b},{min(1.0, abs(score) / scale) * 0.75:.3f})"


def shaded_words(e: Explanation) -> str:
    scale = float(np.abs(e.word_scores).max()) if len(e.word_scores) else 0.0
    return " ".join(
        f'<span style="background:{colour(float(s), scale)}" '
        f'title="{float(s):+.4f}">{escape(w)}</span>'
        for w, s in zip(e.words, e.word_scores)
    )


def heat_overlay(image: Image.Image, regions: np.ndarray, crop_fraction: float) -> str:
    """PNG data URI: the encoder's central crop of `image`, the region map over it."""
    w, h = image.size
    side = min(w, h) * crop_fraction
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    base = (
        image.convert("RGB")
        .resize((SHOWN_SIDE, SHOWN_SIDE), Image.BICUBIC, box=box)
        .convert("RGBA")
    )
    scale = float(np.abs(regions).max()) or 1.0
    cells = np.zeros((*regions.shape, 4), np.uint8)
    for (r, c), s in np.ndenumerate(regions):
        cells[r, c] = (*(FOR if s > 0 else AGAINST), int(round(min(1.0, abs(s) / scale) * 150)))
    # NEAREST keeps the cells visible: each square is one region the score belongs to.
    heat = Image.fromarray(cells, "RGBA").resize(base.size, Image.NEAREST)
    buffer = io.BytesIO()
    Image.alpha_composite(base, heat).convert("RGB").save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def post_card(
    e: Explanation,
    post_id: Any,
    actual: str,
    classes: list[str],
    image: Image.Image | None,
    crop_fraction: float,
) -> str:
    predicted = classes[e.predicted]
    rows = "".join(
        f"<tr><td>{escape(c)}</td><td>{p:.3f}</td><td><span class=bar "
        f'style="width:{p * 120:.0f}px"></span></td></tr>'
        for c, p in zip(classes, e.proba)
    )
    if not e.has_image:
        picture = "<div class=noimg>no image<br>(white dummy)</div>"
    elif image is None or e.regions is None:
        picture = "<div class=noimg>image not used by this model</div>"
    else:
        picture = (
            f'<img alt="image with region map" width={SHOWN_SIDE} height={SHOWN_SIDE} '
            f'src="{heat_overlay(image, e.regions, crop_fraction)}">'
        )
    verdict = "correct" if predicted == actual else "wrong"
    return (
        f'<div class="post {verdict}"><div>{picture}</div><div>'
        f"<b>post {escape(str(post_id))}</b>: predicted <b>{escape(predicted)}</b>, "
        f"actual <b>{escape(actual)}</b> ({verdict})"
        f"<p class=words>{shaded_words(e)}</p>"
        f"<p class=share>text {e.text_share:.0%} / image {1 - e.text_share:.0%} of this "
        f"prediction (log-probability parts {e.text_part:+.3f} / {e.image_part:+.3f})"
        f"{'' if e.has_image else '; the image part is the white dummy itself'}</p>"
        f"<table>{rows}</table></div></div>"
    )


def faithfulness_table(report: dict[str, Any]) -> str:
    lines = []
    for modality in ("text", "image"):
        part = report.get(modality)
        if not part or not part.get("posts"):
            continue
        for mode in ("comprehensiveness", "sufficiency"):
            a, r = part[mode]["attributed"], part[mode]["random"]
            d = part[mode]["attributed_minus_random"]
            lines.append(
                f"<tr><td>{modality}</td><td>{mode}</td><td>{a['mean']:.3f}</td>"
                f"<td>{r['mean']:.3f}</td><td>{d['mean']:+.3f} "
                f"[{d['lo']:+.3f}, {d['hi']:+.3f}]</td><td>{part['posts']}</td></tr>"
            )
    return (
        "<table border=1><tr><th>modality</th><th>measure</th><th>attributed</th>"
        "<th>random</th><th>difference [95% CI]</th><th>posts</th></tr>"
        + "".join(lines)
        + "</table>"
    )


def render(cards: list[tuple[bool, str]], report: dict[str, Any]) -> str:
    """The page: `cards` are (correct?, post_card html) in display order."""
    correct = "".join(html for ok, html in cards if ok)
    wrong = "".join(html for ok, html in cards if not ok)
    methods = report.get("methods", {})
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<title>Explained test posts</title>"
        f"<style>{STYLE}</style></head><body><h1>Explained test posts</h1>"
        f"<p>Words: {escape(str(methods.get('text', '')))}; image regions: "
        f"{escape(str(methods.get('image', '')))}. Orange pushed towards the predicted class, "
        "blue against it; stronger colour, larger score. Faithfulness on "
        f"{report.get('posts', 0)} test posts (probability drop, averaged over k = "
        f"{escape(str(report.get('k', '')))}; comprehensiveness: higher is better, "
        "sufficiency: lower is better):</p>"
        f"{faithfulness_table(report)}"
        f"<h2>Correct predictions</h2>{correct or '<p>none among the posts shown</p>'}"
        f"<h2>Wrong predictions</h2>{wrong or '<p>none among the posts shown</p>'}"
        "</body></html>\n"
    )


def describe(found: dict[str, Any], top: int = 5) -> str:
    """The explanation for a reader: the words that pushed most towards the predicted class,
    the image region that did, and how much each modality contributed."""
    words = sorted(found["words"], key=lambda w: -w["score"])[:top]
    lines = [
        f"why {found['predicted']}: text {found['share']['text']:.0%}, "
        f"image {found['share']['image']:.0%} of the prediction",
        "  words: " + ", ".join(f"{w['word']} ({w['score']:+.3f})" for w in words),
    ]
    if found["no_image"]:
        lines.append("  image: none (prepare's white dummy)")
    elif found["image"]:
        grid = found["image"]["grid"]
        row, col = max(
            ((r, c) for r in range(len(grid)) for c in range(len(grid[r]))),
            key=lambda rc: grid[rc[0]][rc[1]],
        )
        lines.append(
            f"  image: strongest region row {row + 1}, column {col + 1} of "
            f"{len(grid)}x{len(grid)} ({grid[row][col]:+.3f})"
        )
    return "\n".join(lines)
