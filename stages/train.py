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
from typing import Any, Callable

# Idle OpenMP threads sleep instead of spinning (read when torch loads its OpenMP runtime): on
# a busy machine spinning threads starve each other (an MLP step at load 10 on 2 cores: 176 ms
# spinning, 7 ms passive); on an idle one it costs little.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from stages.loss import WEIGHT_MODES, WeightedSmoothedCE, class_weights
from stages.model import (MODALITIES, FusionMLP, read_features, read_input_settings,
                          save_model)
from stages.params import choice, load_params, require

log = logging.getLogger("train")
TRAIN_KEYS = ("seed", "fusion", "hidden", "dropout", "lr", "weight_decay", "label_smoothing",
              "epochs", "batch_size", "patience")
FEATURES, MODELS, LIVE_DIR = Path("features"), Path("models"), Path("reports/train")
DATASET = Path("dataset")
# Without cpu=True, `accelerate launch --multi_gpu` (torchrun) on a CPU-only machine starts N
# independent trainings instead of one gloo process group.
CPU_ONLY = not (torch.cuda.is_available() or torch.backends.mps.is_available())


def _evaluate(model: torch.nn.Module, criterion: torch.nn.Module, data: dict[str, torch.Tensor],
              device: torch.device, n_classes: int) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        logits = model(data["text"].to(device), data["image"].to(device))
        loss = criterion(logits, data["label"].to(device)).item()
    y, pred = data["label"].numpy(), logits.argmax(dim=1).cpu().numpy()
    return {"loss": loss, "accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", labels=range(n_classes),
                                       zero_division=0))}


def train_model(train: dict[str, torch.Tensor], val: dict[str, torch.Tensor],
                n_classes: int, modality: str, cfg: dict[str, Any], weights: np.ndarray,
                on_epoch: Callable[[dict[str, float]], None] | None = None,
                ) -> tuple[FusionMLP, list[dict[str, float]], dict[str, Any]]:
    """Train with `accelerate`; keep the epoch with the best validation macro-F1 (ties: lower
    validation loss); stop after `patience` epochs without improvement."""
    from accelerate import Accelerator  # heavy import: only where training happens
    from accelerate.utils import broadcast_object_list, set_seed

    if len(val["label"]) == 0:
        raise ValueError("validation split is empty: early stopping needs validation rows")
    set_seed(int(cfg["seed"]))
    accelerator = Accelerator(cpu=CPU_ONLY)
    log.info("training on %s, %d processes", accelerator.device, accelerator.num_processes)
    dims = {k: int(train[k].shape[1]) for k in ("text", "image")}
    model = FusionMLP(dims, n_classes, modality, cfg["fusion"], cfg["hidden"], cfg["dropout"])
    model.set_standardisation(train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]),
                                  weight_decay=float(cfg["weight_decay"]))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train["text"], train["image"], train["label"]),
        batch_size=int(cfg["batch_size"]), shuffle=True,
        generator=torch.Generator().manual_seed(int(cfg["seed"])))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    criterion = WeightedSmoothedCE(
        torch.as_tensor(weights, dtype=torch.float32, device=accelerator.device),
        float(cfg["label_smoothing"]))

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"macro_f1": -1.0, "loss": float("inf"), "epoch": 0, "state": None}
    stale = 0
    for epoch in range(1, int(cfg["epochs"]) + 1):
        model.train()
        total, seen = 0.0, 0
        for text, image, label in loader:
            loss = criterion(model(text, image), label)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            total += loss.item() * len(label)
            seen += len(label)
        # Under DDP each process saw its own share of the batches: the loss is over all of them.
        total, seen = accelerator.reduce(torch.tensor([total, seen], dtype=torch.float64,
                                                      device=accelerator.device), "sum").tolist()
        val_metrics = _evaluate(accelerator.unwrap_model(model), criterion, val,
                                accelerator.device, n_classes)
        row = {"epoch": epoch, "train_loss": total / max(seen, 1),
               **{f"val_{k}": v for k, v in val_metrics.items()}}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        improved = val_metrics["macro_f1"] > best["macro_f1"] + 1e-9 or (
            abs(val_metrics["macro_f1"] - best["macro_f1"]) <= 1e-9
            and val_metrics["loss"] < best["loss"])
        # The weights are identical on every process; rank 0's decision makes sure they all
        # stop at the same epoch (a rank leaving early would hang the others' all-reduce).
        improved = broadcast_object_list([improved])[0]
        if improved:
            state = accelerator.unwrap_model(model).state_dict()
            best = {**val_metrics, "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in state.items()}}
            stale = 0
        else:
            stale += 1
            if stale >= int(cfg["patience"]):
                log.info("early stop after epoch %d (best epoch %d)", epoch, best["epoch"])
                break
    module = accelerator.unwrap_model(model).cpu()
    module.load_state_dict(best["state"])
    info = {"best_epoch": best["epoch"], "epochs_run": len(history),
            "best_val_macro_f1": best["macro_f1"], "best_val_accuracy": best["accuracy"],
            "best_val_loss": best["loss"], "device": str(accelerator.device)}
    # All ranks leave the loop together before the DDP wrapper is released: releasing it on one
    # rank while another still runs collectives can abort gloo (seen in CI under load).
    accelerator.wait_for_everyone()
    return module.eval(), history, info


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    params = load_params()
    mode = choice(params, "weights", WEIGHT_MODES)
    modality = choice(params, "modality", MODALITIES)
    cfg = {key: require(params, f"train.{key}") for key in TRAIN_KEYS}
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
                            params.get("manual_weights") if mode == "manual" else None)
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

        module, history, info = train_model(train, val, len(classes), modality, cfg, weights,
                                            on_epoch if writer else None)
        if writer:  # the summary (a DVC metric) describes the kept epoch, not the last one
            best = history[info["best_epoch"] - 1]
            live.summary = {"best_epoch": info["best_epoch"], "epochs_run": info["epochs_run"],
                            "train": {"loss": best["train_loss"]},
                            "val": {k: best[f"val_{k}"] for k in ("loss", "accuracy", "macro_f1")}}
    if writer:
        _save(module, meta, classes, modality, mode, weight_map, cfg, len(train["label"]), info)
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
        "standardisation": {"source": "train split", "rows": rows,
                            "buffers": [f"{k}_{s}" for k in module.inputs for s in ("mean", "std")]},
        "seed": int(cfg["seed"]), "label_smoothing": float(cfg["label_smoothing"]), **info})
    log.info("best epoch %d of %d: val macro-F1 %.4f, accuracy %.4f", info["best_epoch"],
             info["epochs_run"], info["best_val_macro_f1"], info["best_val_accuracy"])


if __name__ == "__main__":
    main()
