"""Throwaway copies of this repository that run the real pipeline (`dvc repro`, offline encoder)
on the shipped sample, for the fault, determinism and security tests.

Each clone cuts the sample to a third (the first of every three rows of each label in both
source files: 88 train / 12 val / 24 test posts, 87 distinct images) and sets
`featurize.shard_size` to 32, so that a run is shorter (about 80 s instead of 130 s on a loaded
2-core machine) and featurize has several shards to resume from. Every clone gets the same
cut and the same sources (the working tree, copied once per session), so outputs of different
clones compare byte for byte.

`clean_run(factory)` runs the whole pipeline once, uninterrupted, in its own clone, and is
shared by every test module of the session (it is the costly part).
"""

from __future__ import annotations

import collections
import csv
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SHARD_SIZE = 32
KEEP_EVERY = 3
TIMEOUT_S = 900  # one dvc command on a loaded 2-core machine takes 1-3 minutes
OUTPUT_DIRS = ("dataset", "features", "models", "reports")
# Without git, what a run needs; with git, every tracked or untracked-but-not-ignored file.
SOURCE_FILES = (
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".dvc/config",
    "stages",
    "plots",
    "dataset/raw",
    "dataset/README.md",
)


@dataclass
class Snapshot:
    """A finished run: sha256 of every pipeline output, dvc.lock, and where copies are kept."""

    digests: dict[str, str]
    lock: dict
    copy: Path  # features/, models/ and reports/metrics.json as they were


def _source_names() -> list[str]:
    if (REPO / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            check=True,
            stdout=subprocess.PIPE,
        ).stdout.decode()
        return [name for name in listed.split("\0") if name and name != "dvc.lock"]
    names = []
    for entry in SOURCE_FILES:
        path = REPO / entry
        names += [
            p.relative_to(REPO).as_posix()
            for p in (path.rglob("*") if path.is_dir() else [path])
            if p.is_file() and "__pycache__" not in p.parts
        ]
    return names


_SOURCE: list[Path] = []


def source_tree(factory: pytest.TempPathFactory) -> Path:
    """The checkout's sources as the working tree has them, copied once per session: every
    clone then runs the same code, even while someone edits or commits meanwhile."""
    if not _SOURCE:
        dest = factory.mktemp("source")
        for name in _source_names():
            if (REPO / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, dest / name)
        _SOURCE.append(dest)
    return _SOURCE[0]


class Clone:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def create(cls, factory: pytest.TempPathFactory, name: str) -> Clone:
        """A copy of the session's source tree as a fresh git repository (DVC wants one), with
        the sample cut and the shard size set; no dvc.lock, no DVC cache."""
        clone = cls(factory.mktemp(name) / "repo")
        shutil.copytree(source_tree(factory), clone.root)
        clone.cut_sample()
        params = clone.root / "params.yaml"
        text = re.sub(
            r"(?m)^(\s+shard_size:)\s*\d+",
            rf"\g<1> {SHARD_SIZE}",
            params.read_text(encoding="utf-8"),
        )
        params.write_text(text, encoding="utf-8")
        assert yaml.safe_load(text)["featurize"]["shard_size"] == SHARD_SIZE
        # dvclive (train) reads the current commit: the repository needs one.
        git = [
            "git",
            "-C",
            str(clone.root),
            "-c",
            "user.name=test",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ]
        for args in (
            ["init", "--quiet"],
            ["add", "--all"],
            ["commit", "--quiet", "--no-verify", "-m", "sources"],
        ):
            subprocess.run(git + args, check=True)
        return clone

    def cut_sample(self) -> None:
        """Keep the first of every KEEP_EVERY rows of each label in both source files, each
        kept line's bytes unchanged (CRLF ends included)."""
        raw = self.root / "dataset" / "raw"
        for path, dialect in (
            (raw / "crisis4_sample.csv", {}),
            (raw / "crisismmd_sample.tsv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
        ):
            lines = path.read_bytes().decode("utf-8").splitlines(keepends=True)
            records = list(csv.reader(lines, **dialect))
            assert len(records) == len(lines), f"{path}: a record spans lines; cut by record"
            label = records[0].index("label")
            seen: collections.Counter[str] = collections.Counter()
            kept = [lines[0]]
            for line, record in zip(lines[1:], records[1:]):
                seen[record[label]] += 1
                if seen[record[label]] % KEEP_EVERY == 1:
                    kept.append(line)
            path.write_bytes("".join(kept).encode("utf-8"))

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "DVC_NO_ANALYTICS": "1",
        }

    def run(self, *cmd: str) -> str:
        """Run a command in the clone; its output (stdout + stderr), or a failure showing it."""
        done = subprocess.run(
            cmd,
            cwd=self.root,
            env=self.env(),
            text=True,
            timeout=TIMEOUT_S,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if done.returncode:
            pytest.fail(
                f"{' '.join(cmd)} exited {done.returncode} in {self.root}:\n{done.stdout[-4000:]}"
            )
        return done.stdout

    def start(self, module: str, log: Path) -> subprocess.Popen:
        """`python -m <module>` in the background, output to `log`."""
        with log.open("w") as out:
            return subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=self.root,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def digests(self) -> dict[str, str]:
        """sha256 of every file the pipeline wrote (dataset/raw is input, not output)."""
        out = {}
        for top in OUTPUT_DIRS:
            for path in sorted((self.root / top).rglob("*")):
                rel = path.relative_to(self.root).as_posix()
                if (
                    path.is_file()
                    and not rel.startswith("dataset/raw/")
                    and rel != ("dataset/README.md")
                ):
                    out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        return out

    def lock(self) -> dict:
        return yaml.safe_load((self.root / "dvc.lock").read_text(encoding="utf-8"))

    def snapshot(self, copy_to: Path) -> Snapshot:
        copy_to.mkdir(parents=True, exist_ok=True)
        for name in ("features", "models"):
            shutil.copytree(self.root / name, copy_to / name)
        shutil.copy2(self.root / "reports" / "metrics.json", copy_to / "metrics.json")
        return Snapshot(self.digests(), self.lock(), copy_to)


def differences(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Paths whose content differs, or that exist in one run only."""
    return sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))


def assert_same_run(first: Snapshot, second: Snapshot, second_dir: Path) -> None:
    """Every output byte-identical, and dvc.lock identical (it also holds each out's md5)."""
    diff = differences(first.digests, second.digests)
    detail = []
    for rel in diff:
        if (
            rel.endswith(".safetensors")
            and (first.copy / rel).is_file()
            and (second_dir / rel).is_file()
        ):
            detail.append(f"{rel}: {tensor_differences(first.copy / rel, second_dir / rel)}")
    assert not diff, f"outputs differ between the runs: {diff}\n" + "\n".join(detail)
    assert first.lock == second.lock, "dvc.lock differs between the runs"


def tensor_differences(a: Path, b: Path) -> dict[str, str]:
    from safetensors.numpy import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    out = {}
    for name in ta.keys() | tb.keys():
        if name not in ta or name not in tb or ta[name].shape != tb[name].shape:
            out[name] = "missing or other shape"
        elif (ta[name] != tb[name]).any():
            out[name] = f"max abs diff {abs(ta[name].astype(float) - tb[name]).max():.3g}"
    return out


_CLEAN: list[tuple[Clone, Snapshot]] = []  # the session's clean run, once made


def clean_run(factory: pytest.TempPathFactory) -> tuple[Clone, Snapshot]:
    """The pipeline run once from scratch with `dvc repro`, uninterrupted, in its own clone;
    made on first use and shared by the session's test modules."""
    if not _CLEAN:
        clone = Clone.create(factory, "clean")
        log = clone.run("dvc", "repro")
        for stage in ("prepare", "featurize", "train", "evaluate"):
            assert f"Running stage '{stage}'" in log, log[-3000:]
        _CLEAN.append((clone, clone.snapshot(factory.mktemp("clean_copy"))))
    return _CLEAN[0]
