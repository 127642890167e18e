"""The user's workflow, end to end, on a fresh clone of the committed project.

Runs the real commands a user types (`dvc repro`, `dvc exp run -S weights=manual`,
`dvc metrics diff`, `dvc plots show`, `dvc push`/`dvc pull`) in a temporary git clone, on
the shipped sample. Uncommitted changes are not part of the clone: CI tests a clean
checkout, so that is what this test sees too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="e2e",
        GIT_AUTHOR_EMAIL="e2e@example.invalid",
        GIT_COMMITTER_NAME="e2e",
        GIT_COMMITTER_EMAIL="e2e@example.invalid",
    )
    return env


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}"
    return out


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("the project has no commit to clone")
    work = tmp_path_factory.mktemp("e2e") / "crisis-mm"
    run(["git", "clone", "--quiet", str(ROOT), str(work)], cwd=work.parent)
    return work


def test_repro_runs_every_stage_then_nothing(clone: Path) -> None:
    first = run(["dvc", "repro"], clone)
    # The cached outputs (dataset, features, models) are not in git, so their stages must run.
    # evaluate's outputs are committed (cache: false); when the rerun model is byte-identical
    # to the committed one, as a deterministic pipeline gives, DVC rightly skips evaluate.
    assert {"prepare", "featurize", "train"} <= stages_run(first), first
    assert "evaluate" in stages_run(first) or "Stage 'evaluate' didn't change" in first, first
    metrics = json.loads((clone / "reports" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    again = run(["dvc", "repro"], clone)
    assert stages_run(again) == set(), again
    # What a user does next: commit the baseline so experiments and diffs have a reference.
    run(["git", "add", "-A"], clone)
    # --allow-empty: a deterministic rerun can reproduce the committed outputs byte for byte.
    run(["git", "commit", "--allow-empty", "-qm", "baseline run"], clone)


def test_remote_push_then_fresh_clone_pulls_without_recomputing(
    clone: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "--local", "-d", "store", str(remote)], clone)
    run(["dvc", "push"], clone)
    second = tmp_path / "second"
    run(["git", "clone", "--quiet", str(clone), str(second)], tmp_path)
    run(["dvc", "remote", "add", "--local", "-d", "store", str(remote)], second)
    run(["dvc", "pull"], second)
    status = run(["dvc", "repro"], second)
    assert stages_run(status) == set(), status
    assert (second / "models" / "mlp.safetensors").is_file()


def test_experiment_reruns_only_train_and_evaluate(clone: Path) -> None:
    before = json.loads((clone / "reports" / "metrics.json").read_text())
    out = run(["dvc", "exp", "run", "-S", "weights=manual"], clone)
    assert stages_run(out) == {"train", "evaluate", "explain"}, out
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], clone))
    changed = {
        name: change
        for per_file in diff.values()
        for name, change in per_file.items()
        if isinstance(change, dict) and change.get("diff")
    }
    assert changed, f"weights=manual changed no metric: {diff}"
    after = json.loads((clone / "reports" / "metrics.json").read_text())
    assert after != before
    shown = run(["dvc", "exp", "show", "--json"], clone)
    assert "weights" in shown and "manual" in shown


def test_plots_page_has_no_remote_scripts(clone: Path) -> None:
    run(["dvc", "plots", "show", "-o", "plots_out"], clone)
    page = (clone / "plots_out" / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=[\"']https?://", page)
    assert "confusion" in page.lower() or "predicted" in page
