"""How the classifier is fitted: the training loop (accelerate, early stopping on validation
macro-F1); for small and mid-size data, k-fold cross-validation over train+val with prepare's
groups kept in one fold, ending in the fold models' ensemble or one refit; and the temperature
that calibrates the probabilities. The train stage calls `fit`; benchmarks call it too, so
they measure exactly what the stage ships.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from stages.calibration import fit_temperature, nll
from stages.loss import WeightedSmoothedCE
from stages.model import EnsembleMLP, FusionMLP

log = logging.getLogger("train")
TRAIN_KEYS = (
    "seed",
    "fusion",
    "hidden",
    "dropout",
    "lr",
    "weight_decay",
    "label_smoothing",
    "epochs",
    "batch_size",
    "patience",
)
# Later additions; a train block without them keeps the earlier behaviour (single split,
# fully balanced auto weights). params.yaml states each.
OPTIONAL_KEYS = {"cv_folds": 0, "cv_max_rows": 0, "auto_weight_power": 1.0, "cv_model": "refit"}
# Without cpu=True, `accelerate launch --multi_gpu` (torchrun) on a CPU-only machine starts N
# independent trainings instead of one gloo process group.
CPU_ONLY = not (torch.cuda.is_available() or torch.backends.mps.is_available())


def _evaluate(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    data: dict[str, torch.Tensor],
    device: torch.device,
    n_classes: int,
) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        logits = model(data["text"].to(device), data["image"].to(device))
        loss = criterion(logits, data["label"].to(device)).item()
    y, pred = data["label"].numpy(), logits.argmax(dim=1).cpu().numpy()
    return {
        "loss": loss,
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(
            f1_score(y, pred, average="macro", labels=range(n_classes), zero_division=0)
        ),
    }


def train_model(
    train: dict[str, torch.Tensor],
    val: dict[str, torch.Tensor],
    n_classes: int,
    modality: str,
    cfg: dict[str, Any],
    weights: np.ndarray,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    keep_last: bool = False,
) -> tuple[FusionMLP, list[dict[str, float]], dict[str, Any]]:
    """Train with `accelerate`; keep the epoch with the best validation macro-F1 (ties: lower
    validation loss); stop after `patience` epochs without improvement. keep_last: run all
    `epochs` and keep the last (a refit whose epoch count was chosen elsewhere)."""
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
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"])
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train["text"], train["image"], train["label"]),
        batch_size=int(cfg["batch_size"]),
        shuffle=True,
        generator=torch.Generator().manual_seed(int(cfg["seed"])),
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    criterion = WeightedSmoothedCE(
        torch.as_tensor(weights, dtype=torch.float32, device=accelerator.device),
        float(cfg["label_smoothing"]),
    )

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
        total, seen = accelerator.reduce(
            torch.tensor([total, seen], dtype=torch.float64, device=accelerator.device), "sum"
        ).tolist()
        val_metrics = _evaluate(
            accelerator.unwrap_model(model), criterion, val, accelerator.device, n_classes
        )
        row = {
            "epoch": epoch,
            "train_loss": total / max(seen, 1),
            **{f"val_{k}": v for k, v in val_metrics.items()},
        }
        history.append(row)
        if on_epoch:
            on_epoch(row)
        improved = val_metrics["macro_f1"] > best["macro_f1"] + 1e-9 or (
            abs(val_metrics["macro_f1"] - best["macro_f1"]) <= 1e-9
            and val_metrics["loss"] < best["loss"]
        )
        # The weights are identical on every process; rank 0's decision makes sure they all
        # stop at the same epoch (a rank leaving early would hang the others' all-reduce).
        improved = broadcast_object_list([improved])[0] or keep_last
        if improved:
            state = accelerator.unwrap_model(model).state_dict()
            best = {
                **val_metrics,
                "epoch": epoch,
                "state": {k: v.detach().cpu().clone() for k, v in state.items()},
            }
            stale = 0
        else:
            stale += 1
            if stale >= int(cfg["patience"]):
                log.info("early stop after epoch %d (best epoch %d)", epoch, best["epoch"])
                break
    module = accelerator.unwrap_model(model).cpu()
    module.load_state_dict(best["state"])
    info = {
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "best_val_macro_f1": best["macro_f1"],
        "best_val_accuracy": best["accuracy"],
        "best_val_loss": best["loss"],
        "device": str(accelerator.device),
    }
    # All ranks leave the loop together before the DDP wrapper is released: releasing it on one
    # rank while another still runs collectives can abort gloo (seen in CI under load).
    accelerator.wait_for_everyone()
    return module.eval(), history, info


@torch.no_grad()
def logits_of(module: FusionMLP, data: dict[str, torch.Tensor]) -> np.ndarray:
    module.eval()
    return module(data["text"], data["image"]).double().numpy()


def calibrate(module: FusionMLP, val: dict[str, torch.Tensor]) -> dict[str, float]:
    """Set the module's temperature from the validation logits; returns what was fitted."""
    logits, labels = logits_of(module, val), val["label"].numpy()
    temperature = fit_temperature(logits, labels)
    module.temperature.fill_(temperature)
    return {
        "temperature": temperature,
        "val_nll_uncalibrated": nll(logits, labels),
        "val_nll_calibrated": nll(logits, labels, temperature),
    }


def concat(*splits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([s[k] for s in splits]) for k in splits[0]}


def take(data: dict[str, torch.Tensor], rows: np.ndarray) -> dict[str, torch.Tensor]:
    index = torch.as_tensor(rows, dtype=torch.int64)
    return {k: v[index] for k, v in data.items()}


@dataclass
class CrossValidation:
    """k fold models over train+val, each early-stopped on its own held-out fold."""

    modules: list[FusionMLP]
    histories: list[list[dict[str, float]]]
    held_out: list[np.ndarray]  # row indices (into the pool) of each fold's held-out part
    oof_logits: np.ndarray  # every pool row's logits from the fold model that did not see it
    epoch: int  # the epoch count with the best mean held-out macro-F1 over the folds
    best_epochs: list[int]  # the epoch each fold model was kept at


def cross_validate(
    pool: dict[str, torch.Tensor],
    n_classes: int,
    modality: str,
    cfg: dict[str, Any],
    weights: np.ndarray,
    folds: int,
    groups: np.ndarray | None = None,
) -> CrossValidation:
    """Stratified k folds (seeded; whole `groups` per fold when given, so that no copy of a
    held-out post is trained on); each fold model trains on k-1 parts, early-stopped on the
    held-out one. The epoch count maximises the fold-mean held-out macro-F1 (a fold that
    stopped early counts with its last score), so the choice rests on every labelled post."""
    labels = pool["label"].numpy()
    seed = int(cfg["seed"])
    splitter = (
        StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        if groups is None
        else StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    )
    modules, histories, held_out, best_epochs = [], [], [], []
    oof = np.zeros((len(labels), n_classes))
    for k, (fit_rows, out_rows) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        module, history, info = train_model(
            take(pool, fit_rows),
            take(pool, out_rows),
            n_classes,
            modality,
            {**cfg, "seed": int(cfg["seed"]) + k},
            weights,
        )
        oof[out_rows] = logits_of(module, take(pool, out_rows))
        modules.append(module)
        histories.append(history)
        held_out.append(out_rows)
        best_epochs.append(int(info["best_epoch"]))
    longest = max(len(h) for h in histories)
    mean_f1 = [
        np.mean([h[min(e, len(h) - 1)]["val_macro_f1"] for h in histories]) for e in range(longest)
    ]
    return CrossValidation(
        modules, histories, held_out, oof, int(np.argmax(mean_f1)) + 1, best_epochs
    )


def fit(
    train: dict[str, torch.Tensor],
    val: dict[str, torch.Tensor],
    n_classes: int,
    modality: str,
    cfg: dict[str, Any],
    weights: np.ndarray,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    groups: Callable[[], np.ndarray] | None = None,
) -> tuple[FusionMLP, list[dict[str, float]], dict[str, Any]]:
    """Large data: train (early-stopped on val), then fit the temperature on val.

    Small data (`cv_folds` >= 2 and at most `cv_max_rows` train+val rows): k-fold cross
    validation on train+val; then either one model refitted on all of train+val for the
    epoch count the folds chose (`cv_model: refit`) or the k fold models averaged
    (`ensemble`); the temperature is fitted on the out-of-fold logits.
    `groups` (called only then) gives each train+val row's group: posts sharing an image or
    a text stay in one fold, else the held-out folds score copies of training posts.
    """
    folds, limit = int(cfg.get("cv_folds", 0)), int(cfg.get("cv_max_rows", 0))
    rows = len(train["label"]) + len(val["label"])
    pool_groups = groups() if groups and 2 <= folds and rows <= limit else None
    if pool_groups is not None and len(np.unique(pool_groups)) < folds:
        # k folds need k groups; fewer (one picture shared by nearly every post) cannot be
        # cross-validated without splitting a group, so the validation split decides.
        log.warning(
            "%d groups over train+val, fewer than cv_folds=%d: single split used",
            len(np.unique(pool_groups)),
            folds,
        )
        folds = 0
    if folds < 2 or rows > limit:
        module, history, info = train_model(train, val, n_classes, modality, cfg, weights, on_epoch)
        return (
            module,
            history,
            {
                **info,
                "selection": "validation split",
                "fit_rows": len(train["label"]),
                **calibrate(module, val),
            },
        )
    module, history, info, _ = refit_after_cv(
        concat(train, val),
        n_classes,
        modality,
        cfg,
        weights,
        on_epoch,
        pool_groups,
    )
    return module, history, info


def refit_after_cv(
    pool: dict[str, torch.Tensor],
    n_classes: int,
    modality: str,
    cfg: dict[str, Any],
    weights: np.ndarray,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    groups: np.ndarray | None = None,
) -> tuple[FusionMLP, list[dict[str, float]], dict[str, Any], CrossValidation]:
    """`fit`'s small-data path: the fold models' epoch count, then a refit on the whole pool
    (`cv_model: refit`) or the fold models themselves (`ensemble`); also returns the
    cross-validation."""
    folds, rows = int(cfg["cv_folds"]), len(pool["label"])
    cv = cross_validate(pool, n_classes, modality, cfg, weights, folds, groups)
    if cfg.get("cv_model", "refit") == "ensemble":
        # Measured better than the refit on validation (docs/RESULTS.md); no extra training.
        module, info = EnsembleMLP.of(cv.modules), {"device": "cpu"}
        kept = "the fold models kept as an ensemble"
    else:
        module, _, info = train_model(
            pool, pool, n_classes, modality, {**cfg, "epochs": cv.epoch}, weights, keep_last=True
        )
        kept = "one model refitted on all of it"
    labels = pool["label"].numpy()
    temperature = fit_temperature(cv.oof_logits, labels)
    module.temperature.fill_(temperature)
    oof_pred = cv.oof_logits.argmax(axis=1)
    # The curves a user sees (dvclive) are the fold means: the refit has no held-out rows.
    mean_history = [
        {
            "epoch": e,
            **{
                key: float(np.mean([h[min(e, len(h)) - 1][key] for h in cv.histories]))
                for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1")
            },
        }
        for e in range(1, max(len(h) for h in cv.histories) + 1)
    ]
    for row in mean_history:
        if on_epoch:
            on_epoch(row)
    chosen = mean_history[cv.epoch - 1]
    return (
        module,
        mean_history,
        {
            **info,
            "selection": f"{folds}-fold cross-validation on train+val ({rows} rows, "
            f"{'grouped' if groups is not None else 'ungrouped'} folds), "
            f"{kept}",
            "fit_rows": rows,
            "best_epoch": cv.epoch,
            "epochs_run": len(mean_history),
            "best_val_macro_f1": chosen["val_macro_f1"],
            "best_val_accuracy": chosen["val_accuracy"],
            "best_val_loss": chosen["val_loss"],
            "oof_macro_f1": float(
                f1_score(
                    labels, oof_pred, average="macro", labels=range(n_classes), zero_division=0
                )
            ),
            "fold_best_epochs": cv.best_epochs,
            "temperature": temperature,
            "val_nll_uncalibrated": nll(cv.oof_logits, labels),
            "val_nll_calibrated": nll(cv.oof_logits, labels, temperature),
        },
        cv,
    )
