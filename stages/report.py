"""Human-readable views of the evaluate stage's metrics: the markdown classification report,
the matplotlib figures (confusion matrices, per-class F1) and the terminal summary table."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    f1_score,
    precision_recall_curve,
)

from stages import bootstrap
from stages.files import atomic_path


def markdown_report(
    results: dict[str, dict], y: dict, pred: dict, classes: list[str], model_meta: dict[str, Any]
) -> str:
    lines = [
        "# Classification report",
        "",
        f"Model: modality `{model_meta['modality']}`, fusion `{model_meta['fusion']}`, "
        f"encoder `{model_meta.get('encoder')}`, class weights `{model_meta.get('weights')}` "
        f"{model_meta.get('class_weights')}, best epoch {model_meta.get('best_epoch')}.",
        "",
        "Each split's figures rest on its `posts` (test posts scored); a class's figures on "
        "its `support`. Brackets: 95% bootstrap interval (percentile, "
        f"{bootstrap.RESAMPLES} resamples of the split's posts, seed {bootstrap.SEED}).",
        "",
        "| split | posts | accuracy [95% CI] | macro-F1 [95% CI] | weighted-F1 | "
        "ROC-AUC (OvR) | log loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, m in results.items():
        auc = "n/a" if m["roc_auc_ovr_macro"] is None else f"{m['roc_auc_ovr_macro']:.4f}"
        acc, f1 = (
            f"{m[k]:.4f} [{m[k + '_ci95_lo']:.3f}, {m[k + '_ci95_hi']:.3f}]"
            for k in ("accuracy", "macro_f1")
        )
        lines.append(
            f"| {split} | {m['rows']} | {acc} | {f1} | {m['weighted_f1']:.4f} | {auc} "
            f"| {m['log_loss']:.4f} |"
        )
    temperature = model_meta.get("temperature", 1.0)
    fitted_on = (
        "the validation split"
        if model_meta.get("selection", "validation split") == "validation split"
        else "the out-of-fold logits of cross-validation"
    )
    lines += [
        "",
        f"Calibration: temperature {temperature:.3f} fitted on {fitted_on}; "
        "expected calibration error (15 equal-width bins of the top "
        "probability), raw softmax -> temperature-scaled: "
        + "; ".join(
            f"{split} {m['ece_uncalibrated']:.4f} -> {m['ece']:.4f}"
            for split, m in results.items()
            if "ece" in m
        )
        + ".",
    ]
    for split in results:
        text = classification_report(
            y[split],
            pred[split],
            labels=list(range(len(classes))),
            target_names=classes,
            digits=4,
            zero_division=0,
        )
        lines += [
            "",
            f"## {split} ({results[split]['rows']} posts)",
            "",
            "```",
            text.rstrip(),
            "```",
        ]
    return "\n".join(lines) + "\n"


def save_figures(
    results: dict[str, dict], y: dict, pred: dict, classes: list[str], out_dir: Path
) -> None:
    import matplotlib  # heavy import, only needed here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5.5))
    for ax, split in zip(np.atleast_1d(axes), results):
        ConfusionMatrixDisplay.from_predictions(
            y[split],
            pred[split],
            labels=list(range(len(classes))),
            display_labels=classes,
            ax=ax,
            colorbar=False,
            xticks_rotation=30,
        )
        ax.set_title(f"{split}: accuracy {results[split]['accuracy']:.3f}")
    fig.tight_layout()
    with atomic_path(out_dir / "confusion_matrix.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(results)
    x = np.arange(len(classes))
    for k, split in enumerate(results):
        f1s = [results[split]["per_class"][c]["f1"] for c in classes]
        bars = ax.bar(x + k * width - 0.4 + width / 2, f1s, width, label=split)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, classes, rotation=15)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("F1")
    ax.set_title("Per-class F1")
    ax.legend(loc="upper center", ncol=len(results), frameon=False)
    fig.tight_layout()
    with atomic_path(out_dir / "per_class_f1.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def summary_table(results: dict[str, dict], classes: list[str]) -> str:
    head = f"{'split':<9}{'rows':>6}{'acc':>8}{'macroF1':>9}{'wF1':>8}{'AUC':>8}{'logloss':>9}"
    head += "".join(f"{('F1 ' + c)[:14]:>15}" for c in classes)
    rows = [head]
    for split, m in results.items():
        auc = float("nan") if m["roc_auc_ovr_macro"] is None else m["roc_auc_ovr_macro"]
        row = (
            f"{split:<9}{m['rows']:>6}{m['accuracy']:>8.4f}{m['macro_f1']:>9.4f}"
            f"{m['weighted_f1']:>8.4f}{auc:>8.4f}{m['log_loss']:>9.4f}"
        )
        rows.append(row + "".join(f"{m['per_class'][c]['f1']:>15.4f}" for c in classes))
    return "\n".join(rows)


def report_csv(result: pd.DataFrame, classes: list[str], out: Path) -> None:
    counts, dummies = Counter(result["predicted"]), Counter(result["image_status"])
    dummy = len(result) - dummies.pop("ok", 0)
    note = f"; {dummy} with no usable image got prepare's white dummy: {dict(dummies)}"
    print(f"predict: {len(result)} posts -> {out}; predicted {dict(counts)}{note if dummy else ''}")
    known = result[result["label"].isin(classes)] if "label" in result else result[:0]
    if "label" in result and len(known) < len(result):
        logging.getLogger("predict").warning(
            "%d rows have a label not in %s: not scored", len(result) - len(known), classes
        )
    if len(known):
        f1 = f1_score(
            known["label"], known["predicted"], labels=classes, average="macro", zero_division=0
        )
        print(
            f"predict: against the label column ({len(known)} rows): accuracy "
            f"{accuracy_score(known['label'], known['predicted']):.4f}, macro-F1 {f1:.4f}"
        )


def pr_curves(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, list]:
    """One-vs-rest precision-recall points per class (classes without positives are left out)."""
    curves = {}
    for i, name in enumerate(classes):
        if not (y_true == i).any():
            continue
        precision, recall, _ = precision_recall_curve(y_true == i, proba[:, i])
        curves[name] = [
            {"recall": round(float(rc), 5), "precision": round(float(pr), 5)}
            for rc, pr in zip(recall, precision)
        ]
    return curves


def predictions_frame(
    ids: np.ndarray, y_true: np.ndarray, proba: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "id": ids,
            "actual": [classes[i] for i in y_true],
            "predicted": [classes[i] for i in proba.argmax(axis=1)],
        }
    )
    for i, name in enumerate(classes):
        frame[f"prob_{name}"] = np.round(proba[:, i], 6)
    return frame
