"""The explain stage on the shipped sample, in the session's clean `dvc repro` run: word and
region removal by attribution must lower the predicted class's probability more than random
removal, the interval of the difference above 0 (the stage scores through encode + the MLP,
the path predict uses)."""

from __future__ import annotations

import csv
import json

import pytest
from pipeline_clone import clean_run

pytestmark = pytest.mark.slow


def test_attributed_removal_beats_random_on_the_sample(tmp_path_factory) -> None:
    clone, _ = clean_run(tmp_path_factory)
    report = json.loads((clone.root / "reports" / "explain.json").read_text(encoding="utf-8"))
    assert report["posts"] > 0 and report["text"]["posts"] == report["posts"]
    assert (report["methods"]["text"], report["methods"]["image"]) == (
        "integrated_gradients",
        "feature_map",
    )
    for modality in ("text", "image"):
        part = report[modality]
        assert part["posts"] > 0, modality
        assert part["comprehensiveness"]["attributed_minus_random"]["lo"] > 0, (modality, part)
    shares = report["share"]
    assert shares["all"]["posts"] == report["posts"]
    assert sum(v["posts"] for k, v in shares.items() if k != "all") == report["posts"]
    with (clone.root / "reports" / "explain" / "deletion.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["k"]) for r in rows] == list(range(max(report["k"]) + 1))
    page = (clone.root / "reports" / "explain" / "index.html").read_text(encoding="utf-8")
    assert "Correct predictions" in page and "data:image/png;base64," in page


def test_dvc_plots_show_draws_the_deletion_curve_offline(tmp_path_factory, tmp_path) -> None:
    from browser import render_dom, require_chromium
    from test_plots_offline import PlotReader, dom_id

    require_chromium()
    clone, _ = clean_run(tmp_path_factory)
    clone.run("dvc", "plots", "show", "-o", str(tmp_path / "plots"))
    name = dom_id("Deletion curve (explain, test)")
    reader = PlotReader({name})
    reader.feed(render_dom(tmp_path / "plots" / "index.html", budget_ms=8000))
    assert reader.svg.get(name), "the deletion curve was not drawn"
    assert reader.paths[name].get("mark-line", 0) >= 4  # attributed and random, text and image
    assert {"text_attributed", "text_random", "image_attributed", "image_random"} <= set(
        reader.texts[name]
    )
