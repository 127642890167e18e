"""train stage: an MLP over frozen text/image embeddings, early-stopped on validation macro-F1.

Reads `weights`, `manual_weights`, `modality`, `train.*` and `features/`; writes
`models/mlp.safetensors`, `models/model.json` and the per-epoch dvclive log in `reports/train/`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from stages.folds import training_groups
from stages.loss import WEIGHT_MODES, class_weights
from stages.model import MODALITIES, read_features, read_input_settings, save_model
from stages.params import choice, load_params, require
from stages.training import (CPU_ONLY, OPTIONAL_KEYS, TRAIN_KEYS, fit,  # noqa: F401
                             train_model)  # train_model, class_weights: re-exported for bench/

log = logging.getLogger("train")
FEATURES, MODELS, LIVE_DIR = Path("features"), Path("models"), Path("reports/train")
DATASET = Path("dataset")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    params = load_params()
    mode = choice(params, "weights", WEIGHT_MODES)
    modality = choice(params, "modality", MODALITIES)
    cfg = {key: require(params, f"train.{key}") for key in TRAIN_KEYS}
    cfg |= {key: params["train"].get(key, default) for key, default in OPTIONAL_KEYS.items()}
    meta = json.loads((FEATURES / "meta.json").read_text(encoding="utf-8"))
    classes = list(meta["classes"])
    train, val = (read_features(FEATURES / f"{s}.safetensors", len(classes), meta["dims"])
                  for s in ("train", "val"))
    # model.json records what shaped the inputs (prepare's classes and input settings), so
    # predict and evaluate follow the model rather than today's params.yaml.
    prepared = json.loads((DATASET / "classes.json").read_text(encoding="utf-8"))
    if prepared != classes:
        raise ValueError(f"features/meta.json has classes {classes} but dataset/classes.json "
                         f"{prepared}: the features are stale; re-run featurize")
    meta = {**meta, "input": read_input_settings(DATASET / "input.json")}
    weights = class_weights(mode, train["label"].numpy(), classes,
                            params.get("manual_weights") if mode == "manual" else None,
                            cfg["auto_weight_power"])
    weight_map = {c: round(float(w), 6) for c, w in zip(classes, weights)}
    log.info("%d train / %d val rows, modality=%s, class weights (%s): %s",
             len(train["label"]), len(val["label"]), modality, mode, weight_map)

    from accelerate import PartialState  # heavy imports: only for the stage run
    from dvclive import Live

    # Under `accelerate launch` every process trains; only the main one writes outputs.
    state = PartialState(cpu=CPU_ONLY)
    writer = state.is_main_process
    # dvcyaml=None: our dvc.yaml declares the plots; `dvc exp run` records the experiment.
    with (Live(dir=str(LIVE_DIR), dvcyaml=None, save_dvc_exp=False) if writer
          else contextlib.nullcontext()) as live:
        def on_epoch(row: dict[str, float]) -> None:
            live.step = int(row["epoch"])  # plots' x axis = epoch number, as in model.json
            live.log_metric("train/loss", row["train_loss"])
            for key in ("loss", "accuracy", "macro_f1"):
                live.log_metric(f"val/{key}", row[f"val_{key}"])
            live.sync()

        def groups() -> Any:  # only for cross-validation: prepare's relations over train+val
            ids = np.concatenate([train["id"].numpy(), val["id"].numpy()])
            return training_groups(DATASET, ids, meta["input"]["dummy_size"],
                                   int(require(params, "prepare.near_duplicate_bits")),
                                   int(require(params, "prepare.min_shared_words")))

        module, history, info = fit(train, val, len(classes), modality, cfg, weights,
                                    on_epoch if writer else None, groups)
        if writer:  # the summary (a DVC metric) describes the kept epoch, not the last one
            best = history[info["best_epoch"] - 1]
            live.summary = {"best_epoch": info["best_epoch"], "epochs_run": info["epochs_run"],
                            "temperature": info["temperature"], "train": {"loss": best["train_loss"]},
                            "val": {k: best[f"val_{k}"] for k in ("loss", "accuracy", "macro_f1")}}
    if writer:
        _save(module, meta, classes, modality, mode, weight_map, cfg, info["fit_rows"], info)
    # Every rank waits for the writer, then leaves the process group: a rank that exits with
    # the group still open can abort in gloo's teardown and fail the whole launch.
    state.wait_for_everyone()
    state.destroy_process_group()
    if not writer:
        # Nothing left to write on this rank; skip interpreter teardown, where gloo's threads
        # can still abort a finished worker and fail the whole launch.
        logging.shutdown()
        os._exit(0)


def _save(module: Any, meta: dict[str, Any], classes: list[str], modality: str, mode: str,
          weight_map: dict[str, float], cfg: dict[str, Any], rows: int,
          info: dict[str, Any]) -> None:
    save_model(MODELS, module, {
        "classes": classes, "input": meta["input"], "encoder": meta.get("encoder"),
        "encoder_model": meta.get("model"), "fingerprint": meta.get("fingerprint"),
        "modality": modality, "fusion": module.fusion,
        "dims": module.config["dims"], "hidden": module.config["hidden"],
        "dropout": module.config["dropout"], "weights": mode, "class_weights": weight_map,
        "standardisation": {"source": "train split" if info["selection"] == "validation split"
                            else "train+val", "rows": rows,
                            "buffers": [f"{k}_{s}" for k in module.inputs for s in ("mean", "std")]},
        "seed": int(cfg["seed"]), "label_smoothing": float(cfg["label_smoothing"]), **info})
    log.info("best epoch %d of %d: val macro-F1 %.4f, accuracy %.4f; temperature %.3f (val log "
             "loss %.4f -> %.4f)", info["best_epoch"], info["epochs_run"],
             info["best_val_macro_f1"], info["best_val_accuracy"], info["temperature"],
             info["val_nll_uncalibrated"], info["val_nll_calibrated"])


if __name__ == "__main__":
    main()
