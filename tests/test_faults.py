"""Killed runs: a featurize or train process SIGKILLed midway leaves no output that looks done,
and the next `dvc repro` ends with every output byte-identical to an uninterrupted run's;
featurize resumes from the shards it completed. Also: `atomic_path` under SIGKILL, and a
damaged shard file is embedded again rather than trusted or fatal.

The pipeline tests run in throwaway clones on a cut of the shipped sample (tests/pipeline_clone.py).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pipeline_clone import REPO, Clone, assert_same_run, clean_run, differences

from stages.feature_store import Items, pending_shards, save_shard, shard_path, shard_tag

SHARDS_LOG = re.compile(r"(\d+) of (\d+) image shards and (\d+) of (\d+) text shards to embed")


def wait_for(
    proc: subprocess.Popen, ready: Callable[[], bool], what: str, log: Path, timeout: float = 600
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(
                f"the process ended (exit {proc.returncode}) before {what}:\n"
                f"{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no sign after {timeout} s that {what}")
        time.sleep(0.02)


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def visible_files(folder: Path) -> list[str]:
    """Files a reader could take for outputs (the temporary ones are hidden dot-files)."""
    return (
        sorted(p.name for p in folder.glob("*") if not p.name.startswith("."))
        if folder.is_dir()
        else []
    )


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Clone:
    """A fresh clone with only the prepare stage run: the kills come in the stages after it."""
    clone = Clone.create(tmp_path_factory, "faults")
    clone.run("dvc", "repro", "prepare")
    return clone


@pytest.mark.slow
def test_featurize_killed_midway_resumes_from_its_shards(
    faulty: Clone, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _, clean = clean_run(tmp_path_factory)
    root, log = faulty.root, tmp_path / "killed.log"
    work = root / "tmp" / "featurize"
    proc = faulty.start("stages.featurize", log)
    wait_for(
        proc, (work / "image-00000.safetensors").exists, "its first image shard was saved", log
    )
    sigkill(proc)
    kept = sorted(p.name for p in work.glob("*.safetensors"))
    assert kept and all(name.startswith("image-") for name in kept), kept
    assert visible_files(root / "features") == []  # no feature file and no meta.json

    log_text = faulty.run("dvc", "repro", "featurize")
    found = SHARDS_LOG.search(log_text)
    assert found, log_text[-3000:]
    images_todo, images_all, texts_todo, texts_all = map(int, found.groups())
    # Killed midway: some image shards done, not all; the rerun embeds only the others.
    assert 0 < len(kept) < images_all and images_todo == images_all - len(kept), found[0]
    assert texts_todo == texts_all, found[0]
    assert not work.exists()  # the shards go once the feature files are complete
    mine = {p: d for p, d in faulty.digests().items() if p.startswith(("features/", "dataset/"))}
    theirs = {p: d for p, d in clean.digests.items() if p.startswith(("features/", "dataset/"))}
    assert any(p.startswith("features/") for p in mine)
    assert not differences(mine, theirs), differences(mine, theirs)


@pytest.mark.slow
def test_train_killed_midway_then_dvc_repro_matches_an_uninterrupted_run(
    faulty: Clone, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _, clean = clean_run(tmp_path_factory)
    root, log = faulty.root, tmp_path / "killed.log"
    faulty.run("dvc", "repro", "featurize")  # done by the test above; then only a check
    epochs = root / "reports" / "train" / "plots" / "metrics" / "train" / "loss.tsv"
    proc = faulty.start("stages.train", log)
    # dvclive writes a line per epoch: kill after the first one, long before the last.
    wait_for(
        proc,
        lambda: epochs.is_file() and len(epochs.read_text().splitlines()) >= 2,
        "its first epoch was logged",
        log,
    )
    sigkill(proc)
    assert visible_files(root / "models") == []

    log_text = faulty.run("dvc", "repro")
    assert "Running stage 'train'" in log_text and "Running stage 'evaluate'" in log_text
    assert "Running stage 'featurize'" not in log_text
    after = faulty.snapshot(tmp_path / "copy")
    assert_same_run(clean, after, after.copy)


WRITER = """
import sys, time
from pathlib import Path
from stages.files import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp, tmp.open("wb") as fh:
    fh.write(b"new" * 1000)
    fh.flush()
    print("half written", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("old", [b"old complete content", None])
def test_atomic_path_killed_midway_leaves_the_old_file_or_none(
    tmp_path: Path, old: bytes | None
) -> None:
    target = tmp_path / "out" / "train.safetensors"
    if old is not None:
        target.parent.mkdir()
        target.write_bytes(old)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "half written\n"
    sigkill(proc)
    if old is None:
        assert not target.exists()
    else:
        assert target.read_bytes() == old
    # What is left is a hidden temporary beside the target, never under the target's name.
    (leftover,) = [p for p in target.parent.iterdir() if p != target]
    assert leftover.name.startswith(".train.safetensors.") and leftover.name.endswith(".tmp")
    assert leftover.read_bytes() == b"new" * 1000


def test_damaged_or_stale_shards_are_embedded_again(tmp_path: Path) -> None:
    items = Items("image", [f"{n}.png" for n in range(6)], [f"key{n}" for n in range(6)], {})
    spans = items.shards(2)
    for k, span in enumerate(spans):
        save_shard(
            shard_path(tmp_path, "image", k),
            np.ones((2, 3), np.float32),
            shard_tag(items, span, "run"),
        )
    assert pending_shards(items, 2, "run", tmp_path, 0, 1) == []
    # Shard 1 cut short (as after a crash before its data reached the disk), shard 2 made
    # by another run (other encoder or batch size): both are redone, shard 0 is kept.
    damaged = shard_path(tmp_path, "image", 1)
    damaged.write_bytes(damaged.read_bytes()[:40])
    save_shard(
        shard_path(tmp_path, "image", 2),
        np.ones((2, 3), np.float32),
        shard_tag(items, spans[2], "other run"),
    )
    todo = pending_shards(items, 2, "run", tmp_path, 0, 1)
    assert [(path.name, span) for path, span, _ in todo] == [
        ("image-00001.safetensors", spans[1]),
        ("image-00002.safetensors", spans[2]),
    ]
