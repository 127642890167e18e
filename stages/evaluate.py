"""evaluate stage: scores the trained model on the test split and on test_balanced_100.

Writes `reports/metrics.json` (nested by split: each figure with its bootstrap interval, and the
calibration error with and without the model's temperature), `reports/predictions_test.csv`,
per-class precision-recall curves and the reliability diagram under `reports/plots/`, PNG
figures under `reports/figures/` and `reports/classification_report.md`; prints a summary.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from stages import bootstrap, calibration
from stages.csvsafe import read_csv, write_csv
from stages.files import write_json, write_text
from stages.model import feature_mismatch, load_model, predict_proba, read_features
from stages.report import (
    markdown_report,
    pr_curves,
    predictions_frame,
    save_figures,
    summary_table,
)

log = logging.getLogger("evaluate")
REPORTS = Path("reports")
SPLITS = ("test", "test_100")  # the second: rows of test whose id is in test_balanced_100.csv


def compute_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy and macro-F1 (each with its 95% bootstrap interval over the split's rows),
    weighted F1, per-class P/R/F1/support, macro one-vs-rest ROC-AUC and log loss, from
    scikit-learn. AUC is None when some class has no row."""
    labels = list(range(len(classes)))
    pred = proba.argmax(axis=1)
    ci = bootstrap.intervals(y_true, pred, len(classes))
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    absent = [classes[i] for i in labels if not (y_true == i).any()]
    auc: float | None = None
    if absent:
        log.warning("ROC-AUC (one-vs-rest) undefined: no rows of %s", absent)
    else:
        # Two classes (fake/real): scikit-learn wants the positive class's score alone.
        score = proba[:, 1] if len(classes) == 2 else proba
        auc = float(roc_auc_score(y_true, score, multi_class="ovr", average="macro", labels=labels))
    return {
        "rows": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, pred)),
        "accuracy_ci95_lo": ci["accuracy_ci95_lo"],
        "accuracy_ci95_hi": ci["accuracy_ci95_hi"],
        "macro_f1": float(f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
        "macro_f1_ci95_lo": ci["macro_f1_ci95_lo"],
        "macro_f1_ci95_hi": ci["macro_f1_ci95_hi"],
        "weighted_f1": float(
            f1_score(y_true, pred, labels=labels, average="weighted", zero_division=0)
        ),
        "roc_auc_ovr_macro": auc,
        "log_loss": float(log_loss(y_true, proba, labels=labels)),
        "per_class": {
            c: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        },
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    module, meta = load_model(Path("models"))
    classes = list(meta["classes"])
    features_meta = json.loads(Path("features/meta.json").read_text(encoding="utf-8"))
    if differ := feature_mismatch(meta, features_meta):
        raise SystemExit(
            "evaluate: error: models/model.json was trained on other features than "
            f"features/meta.json ({'; '.join(differ)}); re-run train"
        )
    test = read_features(Path("features/test.safetensors"), len(classes), meta["dims"])
    small_path = Path("dataset/test_balanced_100.csv")
    small_ids = read_csv(small_path)["id"].to_numpy()
    ids = test["id"].numpy()
    missing = np.setdiff1d(small_ids, ids)
    if len(missing):
        raise ValueError(
            f"{small_path}: {len(missing)} ids not in features/test.safetensors "
            f"(first {missing[:5].tolist()}); re-run featurize"
        )
    proba_all = predict_proba(module, test["text"], test["image"])
    raw_all = predict_proba(module, test["text"], test["image"], calibrated=False)
    y_all = test["label"].numpy()
    keep = np.isin(ids, small_ids)
    probas = {"test": proba_all, "test_100": proba_all[keep]}
    raw = {"test": raw_all, "test_100": raw_all[keep]}
    y = {"test": y_all, "test_100": y_all[keep]}
    pred = {s: p.argmax(axis=1) for s, p in probas.items()}
    results = {
        s: {
            **compute_metrics(y[s], probas[s], classes),
            **calibration.calibration_metrics(y[s], probas[s], raw[s]),
        }
        for s in SPLITS
    }

    write_json(REPORTS / "metrics.json", results)
    write_csv(predictions_frame(ids, y_all, proba_all, classes), REPORTS / "predictions_test.csv")
    for name, points in pr_curves(y_all, proba_all, classes).items():
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        write_json(REPORTS / "plots" / "precision_recall" / f"{safe}.json", points)
    # Reliability diagram (test): one line per variant, and the diagonal of perfect calibration.
    for name, p in (("calibrated", proba_all), ("uncalibrated", raw_all)):
        write_json(
            REPORTS / "plots" / "reliability" / f"{name}.json", calibration.reliability(p, y_all)
        )
    write_json(
        REPORTS / "plots" / "reliability" / "perfect.json",
        [{"confidence": c, "accuracy": c} for c in (0.0, 1.0)],
    )
    save_figures(results, y, pred, classes, REPORTS / "figures")
    write_text(
        REPORTS / "classification_report.md", markdown_report(results, y, pred, classes, meta)
    )
    print(summary_table(results, classes))


if __name__ == "__main__":
    main()
