"""`dvc plots show` draws its plots with no internet: the project's page template at work.

A throwaway DVC project gets this project's `.dvc/config` (which names the template) and
`plots/`, plus plot data shaped like the pipeline's: `reports/predictions_test.csv`
(`id,actual,predicted,prob_<class>...`) for the confusion matrices and dvclive TSV curves. The
real `dvc plots show` writes the page; headless Chromium, its network blocked, loads it and
the test reads what Vega drew. DVC's own CDN page, in the same browser, draws nothing: that
control shows the browser really is offline.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from browser import render_dom, require_chromium
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["urgent_help", "relief_info", "misinformation", "irrelevant"]
STEPS = 12
CONFUSION = "Confusion matrix (test)"
CURVES = "Training curves"
DVC_YAML = """\
plots:
  - Confusion matrix (test):
      template: confusion
      x: predicted
      y:
        reports/predictions_test.csv: actual
  - Confusion matrix, normalised (test):
      template: confusion_normalized
      x: predicted
      y:
        reports/predictions_test.csv: actual
  - Training curves:
      x: step
      y:
        reports/train/plots/metrics/train/loss.tsv: loss
        reports/train/plots/metrics/val/loss.tsv: loss
  - reports/plots/precision_recall:
      template: simple
      x: recall
      y: precision
  - reports/figures
"""
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


def dom_id(name: str) -> str:
    """The id dvc-render gives a plot's <div>."""
    return re.sub(r"[^a-zA-Z0-9\-]", "_", name)


class PlotReader(HTMLParser):
    """What Vega drew inside each plot <div>: its SVG, mark paths per mark type, text labels."""

    def __init__(self, plot_ids: set[str]) -> None:
        super().__init__()
        self.plot_ids = plot_ids
        self.stack: list[tuple[str, str]] = []  # (tag, class) of the open elements
        self.current: str | None = None
        self.depth = 0
        self.svg: dict[str, bool] = {}
        self.paths: dict[str, dict[str, int]] = {}
        self.texts: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            return
        cls = dict(attrs).get("class") or ""
        if self.current is None and tag == "div" and dict(attrs).get("id") in self.plot_ids:
            self.current, self.depth = dict(attrs)["id"], len(self.stack)
            self.svg[self.current], self.paths[self.current], self.texts[self.current] = (
                False,
                {},
                [],
            )
        elif self.current is not None:
            if tag == "svg" and "marks" in cls.split():
                self.svg[self.current] = True
            mark = next((c for _, c in reversed(self.stack) if "role-mark" in c.split()), "")
            if tag == "path" and mark:
                kind = mark.split()[0]  # mark-rect, mark-line, ...
                self.paths[self.current][kind] = self.paths[self.current].get(kind, 0) + 1
        self.stack.append((tag, cls))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID or not self.stack:
            return
        self.stack.pop()
        if self.current is not None and len(self.stack) == self.depth:
            self.current = None

    def handle_data(self, data: str) -> None:
        if self.current is not None and self.stack and self.stack[-1][0] == "text" and data.strip():
            self.texts[self.current].append(data.strip())


def _env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def dvc(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, (
        f"dvc {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}"
    )
    return proc.stdout


def write_plot_data(project: Path) -> None:
    """Predictions and per-epoch curves in the shapes stages/evaluate.py and train.py write."""
    rng = np.random.default_rng(0)
    reports = project / "reports"
    reports.mkdir()
    with (reports / "predictions_test.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "actual", "predicted", *(f"prob_{c}" for c in CLASSES)])
        # Every (actual, predicted) pair occurs, so the matrix has all len(CLASSES)**2 cells.
        for i in range(len(CLASSES) ** 2 * 3):
            actual, predicted = CLASSES[i % 4], CLASSES[(i // 4) % 4]
            probs = rng.dirichlet(np.ones(len(CLASSES)))
            writer.writerow([i, actual, predicted, *(f"{p:.4f}" for p in probs)])
    for split, scale in (("train", 1.0), ("val", 1.3)):
        tsv = reports / "train" / "plots" / "metrics" / split / "loss.tsv"
        tsv.parent.mkdir(parents=True)
        rows = [f"{s}\t{scale / s:.5f}" for s in range(1, STEPS + 1)]
        tsv.write_text("step\tloss\n" + "\n".join(rows) + "\n")
    curves = reports / "plots" / "precision_recall"
    curves.mkdir(parents=True)
    for name in CLASSES[:2]:
        points = [
            {"recall": round(1 - t, 3), "precision": round(0.25 + 0.7 * t, 3)}
            for t in np.linspace(0, 1, 9)
        ]
        (curves / f"{name}.json").write_text(json.dumps(points))
    (reports / "figures").mkdir()
    Image.new("RGB", (40, 30), (200, 40, 40)).save(reports / "figures" / "per_class_f1.png")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed: dvc init needs a git repository")
    project = tmp_path_factory.mktemp("plots") / "project"
    project.mkdir()
    subprocess.run(["git", "init", "--quiet"], cwd=project, check=True)
    dvc("init", "--quiet", cwd=project)
    shutil.copyfile(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    shutil.copytree(ROOT / "plots", project / "plots")
    (project / "dvc.yaml").write_text(DVC_YAML)
    write_plot_data(project)
    return project


@pytest.fixture(scope="module")
def page(project: Path) -> Path:
    """`dvc plots show` written outside the project, where a relative <script src> would break."""
    out = project.parent / "elsewhere" / "plots"
    out.parent.mkdir()
    dvc("plots", "show", "-o", str(out), cwd=project)
    return out / "index.html"


def vega_div_ids(html: str) -> set[str]:
    return set(re.findall(r'<div id = "([^"]+)">\s*<script', html))


def test_template_is_regenerated_from_the_vendored_files() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "vendor_vega.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_config_names_the_project_template(project: Path) -> None:
    configured = dvc("config", "plots.html_template", cwd=project).strip()
    # DVC resolves a relative plots.html_template against the .dvc/ directory.
    template = (project / ".dvc" / configured).resolve()
    assert template == (project / "plots" / "template.html").resolve()


def test_page_loads_nothing_from_the_network(project: Path, page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    remote = re.findall(
        r"""<(?:script|link|img)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//[^"'\s>]*""",
        html,
        re.I,
    )
    assert remote == [], f"the page fetches {remote}"
    for name in ("vega@5", "vega-lite@5", "vega-embed@6"):
        assert f"/* {name}." in html, f"{name} is not inlined in {page}"
    pr_curves = [f"reports/plots/precision_recall/{name}.json" for name in CLASSES[:2]]
    expected = (CONFUSION, "Confusion matrix, normalised (test)", CURVES, *pr_curves)
    assert vega_div_ids(html) == {dom_id(n) for n in expected}
    # dvc copies image plots beside the page, under static/.
    (src,) = re.findall(r'<img src="(static/[^"]+)"', html)
    png = project / "reports" / "figures" / "per_class_f1.png"
    assert (page.parent / src).read_bytes() == png.read_bytes()


def test_chromium_offline_draws_every_plot(page: Path) -> None:
    require_chromium()
    ids = vega_div_ids(page.read_text(encoding="utf-8"))
    reader = PlotReader(ids)
    reader.feed(render_dom(page))
    assert reader.svg == dict.fromkeys(ids, True), f"plots without a drawn SVG: {reader.svg}"

    confusion = dom_id(CONFUSION)
    labels = reader.texts[confusion]
    for name in CLASSES:
        assert labels.count(name) == 2, f"{name} should label both axes: {labels}"
    assert {"actual", "predicted", CONFUSION} <= set(labels)
    assert reader.paths[confusion].get("mark-rect", 0) >= len(CLASSES) ** 2

    curves = dom_id(CURVES)
    assert {"step", "loss", CURVES} <= set(reader.texts[curves])
    assert reader.paths[curves].get("mark-line", 0) >= 2, (
        f"train and val lines: {reader.paths[curves]}"
    )


def test_control_dvc_default_cdn_page_draws_nothing_offline(project: Path, tmp_path: Path) -> None:
    """Without the project template DVC's page needs the CDN: blocked here, nothing draws."""
    require_chromium()
    from dvc_render.html import PAGE_HTML

    default = tmp_path / "default.html"
    default.write_text(PAGE_HTML, encoding="utf-8")
    out = tmp_path / "cdn"
    dvc("plots", "show", "-o", str(out), "--html-template", str(default), cwd=project)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert re.search(r'<script src="https://', html), (
        "dvc-render's default page no longer uses a CDN"
    )
    reader = PlotReader(vega_div_ids(html))
    reader.feed(render_dom(out / "index.html"))
    assert reader.svg and not any(reader.svg.values()), "the browser reached the network"
