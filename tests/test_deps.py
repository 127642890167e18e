"""Every project module a stage runs is a DVC dep of that stage: the closure of its imports,
found by reading the code (ast), must be covered by the stage's deps in dvc.yaml, so that
editing any of them re-runs the stage. Inputs outside every dep are refused by prepare."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from stages import tracking

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "stages"


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of project module `name` (a package's __init__.py), or None if not ours."""
    base = root / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported(path: Path, root: Path = ROOT) -> set[str]:
    """Project modules imported anywhere in `path` (also inside functions)."""
    found = set()
    here = ".".join(path.relative_to(root).with_suffix("").parts)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: from the module's own package upwards
                package = here.split(".")[:-1]
                parent = package[: len(package) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == PACKAGE and module_file(name, root)}


def closure(module: str, root: Path = ROOT) -> set[Path]:
    """Files of `module` and of every project module it imports, transitively, with the
    __init__.py of each package on the way (Python runs them on import)."""
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]), root)
            if path and path not in seen:
                seen.add(path)
                todo += sorted(imported(path, root))
    return seen


def stage_modules(spec: dict) -> dict[str, str]:
    found = {}
    for stage, body in spec["stages"].items():
        if match := re.search(r"python\S* -m ([\w.]+)", str(body.get("cmd", ""))):
            found[stage] = match[1]
    return found


def uncovered(files: set[Path], deps: list[str], root: Path = ROOT) -> list[str]:
    covered = [(root / d).resolve() for d in deps]
    return sorted(
        f.relative_to(root).as_posix()
        for f in files
        if not any(f.resolve() == c or f.resolve().is_relative_to(c) for c in covered)
    )


def test_every_stage_depends_on_its_module_closure() -> None:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    modules = stage_modules(spec)
    assert {"prepare", "featurize", "train", "evaluate"} <= set(modules)
    missing = {
        stage: uncovered(closure(module), spec["stages"][stage]["deps"])
        for stage, module in modules.items()
    }
    assert not {s: m for s, m in missing.items() if m}, f"dvc.yaml deps lack {missing}"


def test_the_closure_check_can_fail(tmp_path: Path) -> None:
    """Negative control: a stage importing a helper (directly, lazily and through a package
    __init__) that dvc.yaml does not list is reported."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import deep\n")
    (pkg / "sub" / "deep.py").write_text("")
    (pkg / "helper.py").write_text("import json\n")
    (pkg / "lazy.py").write_text("")
    (pkg / "stage.py").write_text(
        "from stages import helper\nimport stages.sub\ndef f():\n    from stages.lazy import x\n"
    )
    files = closure(f"{PACKAGE}.stage", tmp_path)
    assert uncovered(files, ["stages/stage.py"], tmp_path) == [
        "stages/__init__.py",
        "stages/helper.py",
        "stages/lazy.py",
        "stages/sub/__init__.py",
        "stages/sub/deep.py",
    ]
    assert uncovered(files, ["stages"], tmp_path) == []


def test_an_untracked_source_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dataset" / "raw").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "dataset" / "raw" / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"prepare": {"cmd": "x", "deps": ["stages/prepare.py", "dataset/raw"]}}}
        )
    )
    monkeypatch.chdir(tmp_path)
    tracking.check_tracked("prepare", [Path("dataset/raw/posts.csv"), Path("dataset/raw")])
    for outside in ("elsewhere/posts.csv", "dataset/raw/link/posts.csv", "/tmp/x.csv"):
        with pytest.raises(tracking.UntrackedError, match="not tracked by DVC.*dataset/raw"):
            tracking.check_tracked("prepare", [Path(outside)])


STAGE_MODULES = {"prepare", "featurize", "train", "evaluate", "explain", "predict"}


def stage_imports(root: Path = ROOT) -> dict[str, set[str]]:
    """For each stage module, the other stage modules it imports (should be none)."""
    found = {}
    for name in STAGE_MODULES:
        path = root / PACKAGE / f"{name}.py"
        if path.is_file():
            others = {m.split(".")[1] for m in imported(path, root) if m.count(".") >= 1}
            found[name] = (others & STAGE_MODULES) - {name}
    return found


def test_no_stage_module_imports_another() -> None:
    assert {s: o for s, o in stage_imports().items() if o} == {}


def test_the_stage_import_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / PACKAGE).mkdir()
    for name in ("__init__", "prepare", "text"):
        (tmp_path / PACKAGE / f"{name}.py").write_text("")
    (tmp_path / PACKAGE / "predict.py").write_text(
        "from stages.text import clean\ndef f():\n    from stages.prepare import settings\n"
    )
    assert stage_imports(tmp_path) == {"prepare": set(), "predict": {"prepare"}}
