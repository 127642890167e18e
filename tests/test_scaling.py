"""Scaling beyond one process: train under `accelerate launch` with 2 CPU processes (DDP).

featurize's 2-process equality test is in tests/test_featurize.py, shard resume after a kill in
tests/test_faults.py, the DVC remote push/pull in tests/test_e2e.py; docs/SCALING.md has the
measured figures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from synthetic_features import write_features

from stages.model import load_model, predict_proba

REPO = Path(__file__).resolve().parents[1]
from launchers import BIN, LAUNCH_2CPU  # noqa: E402

# lr and patience such that early stopping ends the run (epoch 15 of 30 here): every rank
# must leave the loop at the same epoch, or the others hang in the next all-reduce.
TRAIN = {
    "seed": 3,
    "fusion": "concat",
    "hidden": [32, 16],
    "dropout": 0.1,
    "lr": 0.03,
    "weight_decay": 0.0001,
    "label_smoothing": 0.0,
    "epochs": 30,
    "batch_size": 16,
    "patience": 2,
    "auto_weight_power": 1.0,
    "cv_folds": 0,
    "cv_max_rows": 0,
    "cv_model": "refit",
}


def _project(root: Path) -> Path:
    """Synthetic features (4 classes, 30 train rows each, moderately separable) + params."""
    write_features(root, {"train": 30, "val": 10, "test": 5}, separation=1.0)
    params = {
        "weights": "auto",
        "modality": "both",
        "train": TRAIN,
        "prepare": {"near_duplicate_bits": 30, "min_shared_words": 4},
        "manual_weights": {
            "urgent_help": 1.0,
            "relief_info": 1.0,
            "misinformation": 1.0,
            "irrelevant": 1.0,
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _run(command: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(cwd),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.mark.slow
def test_train_under_two_cpu_processes_gives_a_working_model(tmp_path: Path) -> None:
    root = _project(tmp_path)
    logs = _run(LAUNCH_2CPU + ["-m", "stages.train"], root)
    module, meta = load_model(root / "models")
    assert meta["epochs_run"] < TRAIN["epochs"], "early stopping was not exercised"
    stops = [line for line in logs.splitlines() if "early stop after epoch" in line]
    assert len(stops) == 2 and stops[0] == stops[1], logs  # both ranks, the same epoch
    train = load_file(str(root / "features" / "train.safetensors"))
    accuracy = (
        predict_proba(module, train["text"], train["image"]).argmax(1) == train["label"].numpy()
    ).mean()
    assert accuracy > 0.6, f"train accuracy {accuracy:.2f} (chance 0.25)\n{logs}"
    # One writer: dvclive's per-epoch log has each epoch once, not once per process.
    rows = (root / "reports/train/plots/metrics/val/macro_f1.tsv").read_text().splitlines()
    assert len(rows) == 1 + meta["epochs_run"], rows
    summary = json.loads((root / "reports/train/metrics.json").read_text())
    assert summary["best_epoch"] == meta["best_epoch"], summary
    assert "2 processes" in logs, logs  # it did run as two processes


def test_single_process_train_is_deterministic(tmp_path: Path) -> None:
    weights = []
    for name in ("a", "b"):
        root = _project(tmp_path / name)
        _run([sys.executable, "-m", "stages.train"], root)
        weights.append(load_file(str(root / "models" / "mlp.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
