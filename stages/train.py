"""train stage: an MLP over frozen text/image embeddings, early-stopped on validation macro-F1.

Reads `weights`, `manual_weights`, `modality`, `train.*` and `features/`; writes
`models/mlp.safetensors`, `models/model.json` and the per-epoch dvclive log in `reports/train/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from stages import config
from stages.folds import training_groups
from stages.loss import class_weights
from stages.model import model_record, prepared_input, read_features, save_model
from stages.ranks import process_group
from stages.training import (  # noqa: F401
    CPU_ONLY,
    TRAIN_KEYS,
    fit,
    train_model,  # train_model, class_weights: re-exported for bench/
)

log = logging.getLogger("train")
FEATURES, MODELS, LIVE_DIR = Path("features"), Path("models"), Path("reports/train")
DATASET = Path("dataset")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    stage = config.load(config.TrainStage)
    mode, modality = stage.weights, stage.modality
    meta = json.loads((FEATURES / "meta.json").read_text(encoding="utf-8"))
    classes = list(meta["classes"])
    train, val = (
        read_features(FEATURES / f"{s}.safetensors", len(classes), meta["dims"])
        for s in ("train", "val")
    )
    # model.json records what shaped the inputs (prepare's classes and input settings), so
    # predict and evaluate follow the model rather than today's params.yaml.
    meta = {**meta, "input": prepared_input(DATASET, classes)}
    weights = class_weights(
        mode,
        train["label"].numpy(),
        classes,
        stage.manual_weights if mode == "manual" else None,
        stage.train.auto_weight_power,
    )
    weight_map = {c: round(float(w), 6) for c, w in zip(classes, weights)}
    log.info(
        "%d train / %d val rows, modality=%s, class weights (%s): %s",
        len(train["label"]),
        len(val["label"]),
        modality,
        mode,
        weight_map,
    )

    from dvclive import Live  # heavy: only for the stage run

    with process_group(CPU_ONLY) as state:
        writer = state.is_main_process
        _run(stage, train, val, classes, meta, weights, weight_map, writer, Live)


def _run(
    stage: config.TrainStage,
    train: Any,
    val: Any,
    classes: list[str],
    meta: dict,
    weights: Any,
    weight_map: dict[str, float],
    writer: bool,
    Live: Any,
) -> None:
    # The training core (also driven by bench/) takes the validated settings as a mapping.
    mode, modality, cfg = stage.weights, stage.modality, dataclasses.asdict(stage.train)
    # dvcyaml=None: our dvc.yaml declares the plots; `dvc exp run` records the experiment.
    with (
        Live(dir=str(LIVE_DIR), dvcyaml=None, save_dvc_exp=False)
        if writer
        else contextlib.nullcontext()
    ) as live:

        def on_epoch(row: dict[str, float]) -> None:
            live.step = int(row["epoch"])  # plots' x axis = epoch number, as in model.json
            live.log_metric("train/loss", row["train_loss"])
            for key in ("loss", "accuracy", "macro_f1"):
                live.log_metric(f"val/{key}", row[f"val_{key}"])
            live.sync()

        def groups() -> Any:  # only for cross-validation: prepare's relations over train+val
            ids = np.concatenate([train["id"].numpy(), val["id"].numpy()])
            return training_groups(
                DATASET,
                ids,
                meta["input"]["dummy_size"],
                stage.prepare.near_duplicate_bits,
                stage.prepare.min_shared_words,
            )

        module, history, info = fit(
            train, val, len(classes), modality, cfg, weights, on_epoch if writer else None, groups
        )
        if writer:  # the summary (a DVC metric) describes the kept epoch, not the last one
            best = history[info["best_epoch"] - 1]
            live.summary = {
                "best_epoch": info["best_epoch"],
                "epochs_run": info["epochs_run"],
                "temperature": info["temperature"],
                "train": {"loss": best["train_loss"]},
                "val": {k: best[f"val_{k}"] for k in ("loss", "accuracy", "macro_f1")},
            }
    if not writer:
        return
    rows = info["fit_rows"]
    record = model_record(module, meta, classes, modality, mode, weight_map, cfg, rows, info)
    save_model(MODELS, module, record)
    log.info(
        "best epoch %d of %d: val macro-F1 %.4f, accuracy %.4f; temperature %.3f (val log "
        "loss %.4f -> %.4f)",
        *(info[k] for k in ("best_epoch", "epochs_run", "best_val_macro_f1")),
        *(info[k] for k in ("best_val_accuracy", "temperature")),
        *(info[k] for k in ("val_nll_uncalibrated", "val_nll_calibrated")),
    )


if __name__ == "__main__":
    main()
