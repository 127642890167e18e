"""Two `dvc repro` runs from scratch give the same bytes: reports/metrics.json, the feature
tensors, the model, and every other output (dvc.lock, which records each output's md5, too).

Runs in a throwaway clone on a cut of the shipped sample (tests/pipeline_clone.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pipeline_clone import assert_same_run, clean_run
from safetensors.numpy import load_file

STAGES = ("prepare", "featurize", "train", "evaluate")


@pytest.mark.slow
def test_two_runs_from_scratch_are_identical(tmp_path_factory: pytest.TempPathFactory) -> None:
    clone, first = clean_run(tmp_path_factory)
    # --force runs every stage again, deleting its outputs first, and bypasses the run cache.
    log = clone.run("dvc", "repro", "--force")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log, log[-3000:]
    second = clone.snapshot(tmp_path_factory.mktemp("second_copy"))

    metrics = [json.loads((run.copy / "metrics.json").read_text()) for run in (first, second)]
    assert metrics[0] == metrics[1]
    assert metrics[0]["test"]["rows"] > 0  # a real evaluation, not an empty one
    for split in ("train", "val", "test"):
        tensors = [
            load_file(str(run.copy / "features" / f"{split}.safetensors"))
            for run in (first, second)
        ]
        assert tensors[0].keys() == tensors[1].keys() == {"text", "image", "label", "id"}
        for name in tensors[0]:
            assert np.array_equal(tensors[0][name], tensors[1][name]), f"{split}: {name} differs"
    assert_same_run(first, second, second.copy)
