"""evaluate stage: scores the trained model on the test split and on test_balanced_100.

Writes `reports/metrics.json` (nested by split), `reports/predictions_test.csv`, per-class
precision-recall curves under `reports/plots/`, PNG figures under `reports/figures/` and
`reports/classification_report.md`; prints a compact summary table.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (accuracy_score, classification_report, f1_score, log_loss,
                             precision_recall_curve, precision_recall_fscore_support,
                             roc_auc_score)

from stages.csvsafe import read_csv, write_csv
from stages.files import atomic_path, write_json, write_text
from stages.model import load_model, predict_proba, read_features

log = logging.getLogger("evaluate")
REPORTS = Path("reports")
SPLITS = {"test": "test", "test_100": "test_balanced_100"}


def compute_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class P/R/F1/support, macro one-vs-rest ROC-AUC and
    log loss, all from scikit-learn. AUC is None when some class has no row."""
    labels = list(range(len(classes)))
    pred = proba.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    absent = [classes[i] for i in labels if not (y_true == i).any()]
    auc: float | None = None
    if absent:
        log.warning("ROC-AUC (one-vs-rest) undefined: no rows of %s", absent)
    else:
        auc = float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro",
                                  labels=labels))
    return {
        "rows": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, pred)),
        "macro_f1": float(f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, pred, labels=labels, average="weighted",
                                      zero_division=0)),
        "roc_auc_ovr_macro": auc,
        "log_loss": float(log_loss(y_true, proba, labels=labels)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(s[i])} for i, c in enumerate(classes)},
    }


def pr_curves(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, list]:
    """One-vs-rest precision-recall points per class (classes without positives are left out)."""
    curves = {}
    for i, name in enumerate(classes):
        if not (y_true == i).any():
            continue
        precision, recall, _ = precision_recall_curve(y_true == i, proba[:, i])
        curves[name] = [{"recall": round(float(rc), 5), "precision": round(float(pr), 5)}
                        for rc, pr in zip(recall, precision)]
    return curves


def predictions_frame(ids: np.ndarray, y_true: np.ndarray, proba: np.ndarray,
                      classes: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({"id": ids, "actual": [classes[i] for i in y_true],
                          "predicted": [classes[i] for i in proba.argmax(axis=1)]})
    for i, name in enumerate(classes):
        frame[f"prob_{name}"] = np.round(proba[:, i], 6)
    return frame


def markdown_report(results: dict[str, dict], y: dict, pred: dict, classes: list[str],
                    model_meta: dict[str, Any]) -> str:
    lines = ["# Classification report", "",
             f"Model: modality `{model_meta['modality']}`, fusion `{model_meta['fusion']}`, "
             f"encoder `{model_meta.get('encoder')}`, class weights `{model_meta.get('weights')}` "
             f"{model_meta.get('class_weights')}, best epoch {model_meta.get('best_epoch')}.", "",
             "| split | rows | accuracy | macro-F1 | weighted-F1 | ROC-AUC (OvR) | log loss |",
             "|---|---|---|---|---|---|---|"]
    for split, m in results.items():
        auc = "n/a" if m["roc_auc_ovr_macro"] is None else f"{m['roc_auc_ovr_macro']:.4f}"
        lines.append(f"| {split} | {m['rows']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | "
                     f"{m['weighted_f1']:.4f} | {auc} | {m['log_loss']:.4f} |")
    for split in results:
        text = classification_report(y[split], pred[split], labels=list(range(len(classes))),
                                     target_names=classes, digits=4, zero_division=0)
        lines += ["", f"## {split} ({SPLITS[split]})", "", "```", text.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def save_figures(results: dict[str, dict], y: dict, pred: dict, classes: list[str],
                 out_dir: Path) -> None:
    import matplotlib  # heavy import, only needed here
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5.5))
    for ax, split in zip(np.atleast_1d(axes), results):
        ConfusionMatrixDisplay.from_predictions(
            y[split], pred[split], labels=list(range(len(classes))), display_labels=classes,
            ax=ax, colorbar=False, xticks_rotation=30)
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
        row = (f"{split:<9}{m['rows']:>6}{m['accuracy']:>8.4f}{m['macro_f1']:>9.4f}"
               f"{m['weighted_f1']:>8.4f}{auc:>8.4f}{m['log_loss']:>9.4f}")
        rows.append(row + "".join(f"{m['per_class'][c]['f1']:>15.4f}" for c in classes))
    return "\n".join(rows)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    module, meta = load_model(Path("models"))
    classes = list(meta["classes"])
    test = read_features(Path("features/test.safetensors"), len(classes))
    small_path = Path("dataset/test_balanced_100.csv")
    small_ids = read_csv(small_path)["id"].to_numpy()
    ids = test["id"].numpy()
    missing = np.setdiff1d(small_ids, ids)
    if len(missing):
        raise ValueError(f"{small_path}: {len(missing)} ids not in features/test.safetensors "
                         f"(first {missing[:5].tolist()}); re-run featurize")
    proba_all = predict_proba(module, test["text"], test["image"])
    y_all = test["label"].numpy()
    keep = np.isin(ids, small_ids)
    probas = {"test": proba_all, "test_100": proba_all[keep]}
    y = {"test": y_all, "test_100": y_all[keep]}
    pred = {s: p.argmax(axis=1) for s, p in probas.items()}
    results = {s: compute_metrics(y[s], probas[s], classes) for s in SPLITS}

    write_json(REPORTS / "metrics.json", results)
    write_csv(predictions_frame(ids, y_all, proba_all, classes), REPORTS / "predictions_test.csv")
    for name, points in pr_curves(y_all, proba_all, classes).items():
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        write_json(REPORTS / "plots" / "precision_recall" / f"{safe}.json", points)
    save_figures(results, y, pred, classes, REPORTS / "figures")
    write_text(REPORTS / "classification_report.md", markdown_report(results, y, pred, classes, meta))
    print(summary_table(results, classes))


if __name__ == "__main__":
    main()
