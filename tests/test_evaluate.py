"""evaluate stage: metrics against scikit-learn and hand counts, and the stage's outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score, log_loss, roc_auc_score
from synthetic_features import CLASSES, write_features

from stages import evaluate, report, train

# Fixed predictions: rows 0-2 urgent_help, 3-5 relief_info, 6-7 misinformation, 8-9 irrelevant.
Y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
PROBA = np.array(
    [
        [0.7, 0.1, 0.1, 0.1],
        [0.6, 0.2, 0.1, 0.1],
        [0.2, 0.5, 0.2, 0.1],  # 2 of 3 right
        [0.1, 0.8, 0.05, 0.05],
        [0.1, 0.6, 0.2, 0.1],
        [0.3, 0.4, 0.2, 0.1],  # 3 of 3
        [0.1, 0.1, 0.7, 0.1],
        [0.1, 0.1, 0.3, 0.5],  # 1 of 2
        [0.05, 0.05, 0.1, 0.8],
        [0.2, 0.1, 0.1, 0.6],  # 2 of 2
    ]
)


def test_metrics_match_hand_counts_and_scikit_learn() -> None:
    m = evaluate.compute_metrics(Y, PROBA, CLASSES)
    assert m["rows"] == 10 and m["accuracy"] == pytest.approx(0.8)
    # Hand counts: urgent P=2/2 R=2/3; relief P=3/4 R=1; misinfo P=1 R=1/2; irrelevant P=2/3 R=1.
    expected = {
        "urgent_help": (1.0, 2 / 3, 0.8, 3),
        "relief_info": (0.75, 1.0, 6 / 7, 3),
        "misinformation": (1.0, 0.5, 2 / 3, 2),
        "irrelevant": (2 / 3, 1.0, 0.8, 2),
    }
    for name, (p, r, f, s) in expected.items():
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (p, r, f, s)
        )
    assert m["macro_f1"] == pytest.approx(np.mean([0.8, 6 / 7, 2 / 3, 0.8]))
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 3 * 6 / 7 + 2 * 2 / 3 + 2 * 0.8) / 10)
    pred = PROBA.argmax(axis=1)
    assert m["macro_f1"] == pytest.approx(f1_score(Y, pred, average="macro"))
    assert m["roc_auc_ovr_macro"] == pytest.approx(roc_auc_score(Y, PROBA, multi_class="ovr"))
    assert m["log_loss"] == pytest.approx(-np.mean(np.log(PROBA[np.arange(10), Y])))
    assert m["log_loss"] == pytest.approx(log_loss(Y, PROBA))


def test_class_absent_from_split_gives_no_auc_but_other_metrics() -> None:
    keep = Y != 3
    m = evaluate.compute_metrics(Y[keep], PROBA[keep], CLASSES)
    assert m["roc_auc_ovr_macro"] is None
    assert m["per_class"]["irrelevant"]["support"] == 0
    assert np.isfinite(m["log_loss"])


def test_two_classes_get_a_binary_auc() -> None:
    y = np.array([0, 1, 1, 0, 1])
    proba = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1], [0.2, 0.8]])
    metrics = evaluate.compute_metrics(y, proba, ["fake", "real"])
    assert metrics["roc_auc_ovr_macro"] == pytest.approx(roc_auc_score(y, proba[:, 1]))
    assert metrics["accuracy"] == pytest.approx(0.8)


def test_pr_curves_and_prediction_rows() -> None:
    curves = report.pr_curves(Y, PROBA, CLASSES)
    assert set(curves) == set(CLASSES)
    assert curves["relief_info"][-1] == {"recall": 0.0, "precision": 1.0}
    frame = report.predictions_frame(np.arange(100, 110), Y, PROBA, CLASSES)
    assert list(frame.columns) == ["id", "actual", "predicted"] + [f"prob_{c}" for c in CLASSES]
    assert frame.loc[2, "actual"] == "urgent_help" and frame.loc[2, "predicted"] == "relief_info"


def _train_on_synthetic(root, monkeypatch) -> None:
    write_features(root, {"train": 20, "val": 6, "test": [9, 8, 7, 6]}, separation=0.6)
    params = {
        "weights": "auto",
        "modality": "both",
        "manual_weights": {},
        "prepare": {"near_duplicate_bits": 30, "min_shared_words": 4},
        "train": {
            "seed": 3,
            "fusion": "concat",
            "hidden": [16, 8],
            "dropout": 0.1,
            "lr": 0.003,
            "weight_decay": 0.0,
            "label_smoothing": 0.1,
            "epochs": 5,
            "batch_size": 16,
            "patience": 5,
            "auto_weight_power": 1.0,
            "cv_folds": 0,
            "cv_max_rows": 0,
            "cv_model": "refit",
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(root)
    train.main()


def test_main_writes_every_report(tmp_path, monkeypatch, capsys) -> None:
    _train_on_synthetic(tmp_path, monkeypatch)
    evaluate.main()
    reports = tmp_path / "reports"
    metrics = json.loads((reports / "metrics.json").read_text())
    small_ids = pd.read_csv(tmp_path / "dataset" / "test_balanced_100.csv")["id"]
    assert metrics["test"]["rows"] == 30 and metrics["test_100"]["rows"] == len(small_ids) == 15
    preds = pd.read_csv(reports / "predictions_test.csv")
    assert len(preds) == 30 and set(preds["actual"]) == set(CLASSES)
    prob_cols = [f"prob_{c}" for c in CLASSES]
    np.testing.assert_allclose(preds[prob_cols].sum(axis=1), 1.0, atol=1e-5)
    assert (preds["actual"] == preds["predicted"]).mean() == pytest.approx(
        metrics["test"]["accuracy"]
    )
    small = preds[preds["id"].isin(small_ids)]
    assert (small["actual"] == small["predicted"]).mean() == pytest.approx(
        metrics["test_100"]["accuracy"]
    )
    for name in ("confusion_matrix.png", "per_class_f1.png"):
        assert (reports / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.stem for p in (reports / "plots" / "precision_recall").glob("*.json")} == set(CLASSES)
    report = (reports / "classification_report.md").read_text()
    assert "## test_100" in report and "misinformation" in report
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("split") and "test_100" in table


def test_main_rejects_ids_missing_from_test_features(tmp_path, monkeypatch) -> None:
    _train_on_synthetic(tmp_path, monkeypatch)
    ids_csv = tmp_path / "dataset" / "test_balanced_100.csv"
    known = int(pd.read_csv(ids_csv)["id"].iloc[0])
    pd.DataFrame({"id": [999999, known]}).to_csv(ids_csv, index=False)
    with pytest.raises(ValueError, match=r"test_balanced_100.csv: 1 ids not in .*\[999999\]"):
        evaluate.main()


@pytest.mark.parametrize(
    "key,value,shown",
    [
        ("fingerprint", "other", r"fingerprint: model 'test', features 'other'"),
        (
            "classes",
            ["urgent_help", "relief_info", "irrelevant", "misinformation"],
            r"classes: model \['urgent_help', 'relief_info', 'misinformation', 'irrelevant'\], "
            r"features \['urgent_help', 'relief_info', 'irrelevant', 'misinformation'\]",
        ),
        ("encoder", "clip", r"encoder: model 'synthetic', features 'clip'"),
    ],
)
def test_main_refuses_features_the_model_was_not_trained_on(
    tmp_path, monkeypatch, key, value, shown
) -> None:
    _train_on_synthetic(tmp_path, monkeypatch)
    meta_path = tmp_path / "features" / "meta.json"
    meta = json.loads(meta_path.read_text())
    evaluate.main()  # negative control: the untouched features pass
    meta_path.write_text(json.dumps({**meta, key: value}))
    with pytest.raises(SystemExit, match=r"^evaluate: error: .*" + shown + ".*re-run train"):
        evaluate.main()


def test_metrics_carry_bootstrap_intervals_around_each_value(tmp_path, monkeypatch) -> None:
    _train_on_synthetic(tmp_path, monkeypatch)
    evaluate.main()
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    for split in ("test", "test_100"):
        m = metrics[split]
        for key in ("accuracy", "macro_f1"):
            assert 0 <= m[f"{key}_ci95_lo"] <= m[key] <= m[f"{key}_ci95_hi"] <= 1
        # 30 and 15 posts: the intervals are wide, and wider on the smaller split.
        assert m["accuracy_ci95_hi"] - m["accuracy_ci95_lo"] > 0.1
    width = {
        s: metrics[s]["accuracy_ci95_hi"] - metrics[s]["accuracy_ci95_lo"]
        for s in ("test", "test_100")
    }
    assert width["test_100"] > width["test"]
    report = (tmp_path / "reports" / "classification_report.md").read_text()
    assert "## test (30 posts)" in report and "## test_100 (15 posts)" in report
    lo, hi = metrics["test"]["accuracy_ci95_lo"], metrics["test"]["accuracy_ci95_hi"]
    assert f"{metrics['test']['accuracy']:.4f} [{lo:.3f}, {hi:.3f}]" in report


def test_metrics_carry_the_calibration_error_and_the_reliability_diagram(
    tmp_path, monkeypatch
) -> None:
    _train_on_synthetic(tmp_path, monkeypatch)
    evaluate.main()
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    for split in ("test", "test_100"):
        assert 0 <= metrics[split]["ece"] <= 1 and 0 <= metrics[split]["ece_uncalibrated"] <= 1
    plots = tmp_path / "reports" / "plots" / "reliability"
    for name in ("calibrated", "uncalibrated"):
        bins = json.loads((plots / f"{name}.json").read_text())
        assert sum(b["count"] for b in bins) == metrics["test"]["rows"]
        ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / 30
        key = "ece" if name == "calibrated" else "ece_uncalibrated"
        assert ece == pytest.approx(metrics["test"][key])
    assert json.loads((plots / "perfect.json").read_text())[-1] == {
        "confidence": 1.0,
        "accuracy": 1.0,
    }
    report = (tmp_path / "reports" / "classification_report.md").read_text()
    assert "Calibration: temperature" in report
