"""Refusing inputs DVC cannot see: a file a stage reads but that no dep of the stage covers
would never re-run it when it changes, leaving outputs silently stale."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import yaml

log = logging.getLogger(__name__)
DVC_FILE = Path("dvc.yaml")


class UntrackedError(ValueError):
    """An input path lies outside every dep of the stage that reads it."""


def stage_deps(stage: str, dvc_file: Path = DVC_FILE) -> list[str]:
    spec = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
    deps = ((spec.get("stages") or {}).get(stage) or {}).get("deps") or []
    return [str(d) for d in deps]


def check_tracked(stage: str, paths: Iterable[Path], dvc_file: Path = DVC_FILE) -> None:
    """Raise UntrackedError naming the first path that no dep of `stage` in dvc.yaml covers
    (symlinks resolved, so a link out of a tracked folder does not count as tracked). Outside a
    DVC project (no dvc.yaml here) there is nothing to go stale and nothing is checked."""
    if not dvc_file.is_file():
        log.info("no %s here: not checking that %s's inputs are DVC deps", dvc_file, stage)
        return
    deps = stage_deps(stage, dvc_file)
    covered = [Path(d).resolve() for d in deps]
    for path in paths:
        real = Path(path).resolve()
        if not any(real == dep or real.is_relative_to(dep) for dep in covered):
            raise UntrackedError(
                f"{path} is not tracked by DVC: no dep of the {stage} stage in {dvc_file} "
                f"({', '.join(deps)}) covers it, so editing it would not re-run {stage}. Bring "
                f"it in under dataset/raw/ (copy it there, or `dvc import-url <url> "
                f"dataset/raw/<name>` / `dvc add`) and point data.sources at it, or add its "
                f"folder to the {stage} stage's deps in {dvc_file}"
            )
