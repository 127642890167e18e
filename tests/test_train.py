"""train stage: class weights, learning, early stopping, determinism, the stage's outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from synthetic_features import CLASSES, INPUT, make_split, write_features

from stages import loss, train
from stages.images import encode_jpeg, white_image
from stages.model import load_model, predict_proba, save_model
from stages.params import ParamsError

CFG = {
    "seed": 7,
    "fusion": "concat",
    "hidden": [32, 16],
    "dropout": 0.1,
    "lr": 0.003,
    "weight_decay": 0.0001,
    "label_smoothing": 0.0,
    "epochs": 40,
    "batch_size": 16,
    "patience": 40,
    "auto_weight_power": 1.0,
    "cv_folds": 0,
    "cv_max_rows": 0,
    "cv_model": "refit",
}


def test_auto_weights_are_inverse_frequency() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2] * 2 + [3] * 1)
    # balanced: n_samples / (n_classes * count) = 12 / (4 * count)
    np.testing.assert_allclose(loss.class_weights("auto", labels, CLASSES), [0.5, 1.0, 1.5, 3.0])


def test_auto_weights_need_every_class() -> None:
    with pytest.raises(ValueError, match=r"no training rows for \['irrelevant'\]"):
        loss.class_weights("auto", np.array([0, 1, 2, 2]), CLASSES)


def test_manual_and_none_weights() -> None:
    manual = {"irrelevant": 0.5, "urgent_help": 4, "relief_info": 1.0, "misinformation": 2.0}
    labels = np.array([0, 1, 2, 3, 3])
    np.testing.assert_array_equal(
        loss.class_weights("manual", labels, CLASSES, manual), [4.0, 1.0, 2.0, 0.5]
    )
    np.testing.assert_array_equal(loss.class_weights("none", labels, CLASSES), [1, 1, 1, 1])


@pytest.mark.parametrize(
    "manual,message",
    [
        (
            {"urgent_help": 4.0, "relief_info": 1.0, "misinformation": 1.0},
            r"missing \['irrelevant'\], unknown \[\]",
        ),
        (
            {
                "urgent_help": 4.0,
                "relief_info": 1.0,
                "misinformation": 1.0,
                "irrelevant": 1.0,
                "rumour": 2.0,
            },
            r"missing \[\], unknown \['rumour'\]",
        ),
        (
            {"urgent_help": 0.0, "relief_info": 1.0, "misinformation": 1.0, "irrelevant": "x"},
            "positive numbers",
        ),
        (None, r"missing \['urgent_help'"),
    ],
)
def test_manual_weights_errors_name_the_problem(manual, message) -> None:
    with pytest.raises(ParamsError, match=message):
        loss.class_weights("manual", np.array([0, 1, 2, 3]), CLASSES, manual)


def test_unknown_weights_mode() -> None:
    with pytest.raises(ParamsError, match="weights='balanced'"):
        loss.class_weights("balanced", np.array([0, 1]), CLASSES)


def test_loss_equals_torch_without_smoothing_and_ignores_absent_classes_with_it() -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(9, 4, generator=g), torch.tensor([1, 1, 2, 3, 0, 2, 2, 1, 3])
    weight = torch.tensor([3.0, 1.0, 0.5, 2.0])
    expected = torch.nn.CrossEntropyLoss(weight=weight)(logits, target)
    assert torch.allclose(loss.WeightedSmoothedCE(weight, 0.0)(logits, target), expected)
    # Smoothing: each row counts with its own class's weight only, so the weight of a class
    # absent from the batch changes nothing (torch's built-in version does change).
    rows = target != 0
    low, high = (
        loss.WeightedSmoothedCE(torch.tensor([w, 1.0, 0.5, 2.0]), 0.1)(logits[rows], target[rows])
        for w in (1.0, 100.0)
    )
    assert torch.allclose(low, high)
    smooth = (1 - 0.1) * torch.nn.functional.cross_entropy(
        logits, target, reduction="none"
    ) - 0.1 * torch.log_softmax(logits, 1).mean(1)
    assert torch.allclose(
        loss.WeightedSmoothedCE(torch.ones(4), 0.1)(logits, target), smooth.mean()
    )


def test_rare_class_with_huge_auto_weight_does_not_take_over() -> None:
    # As on crisis4 (21 urgent_help rows of 8,086): torch's built-in smoothed weighted loss
    # predicts urgent_help for 95% of these validation rows (accuracy 0.30).
    tr, val = make_split([2, 100, 100, 100], seed=1, separation=1.0), make_split(10, seed=2)
    weights = loss.class_weights("auto", tr["label"].numpy(), CLASSES)
    assert weights[0] == pytest.approx(302 / 8)
    cfg = {**CFG, "label_smoothing": 0.1, "epochs": 20, "batch_size": 32}
    module, _, _ = train.train_model(tr, val, 4, "both", cfg, weights)
    pred = predict_proba(module, val["text"], val["image"]).argmax(axis=1)
    assert (pred == val["label"].numpy()).mean() >= 0.9 and (pred == 0).mean() <= 0.4


def test_mlp_separates_a_separable_set_perfectly() -> None:
    tr, val = make_split(30, seed=1), make_split(10, seed=2)
    module, history, info = train.train_model(tr, val, 4, "both", CFG, np.ones(4))
    for split in (tr, val):
        proba = predict_proba(module, split["text"], split["image"])
        assert (proba.argmax(axis=1) == split["label"].numpy()).all()
    assert info["best_val_macro_f1"] == 1.0
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize(
    "modality,fusion", [("text", "concat"), ("image", "concat"), ("both", "gated")]
)
def test_other_modalities_and_fusion_learn(modality: str, fusion: str) -> None:
    tr, val = make_split(30, seed=1), make_split(10, seed=2)
    _, _, info = train.train_model(tr, val, 4, modality, {**CFG, "fusion": fusion}, np.ones(4))
    assert info["best_val_macro_f1"] >= 0.95


def test_early_stopping_stops_and_keeps_the_best_epoch() -> None:
    tr, val = make_split(20, seed=1, separation=0.3), make_split(10, seed=2, separation=0.3)
    # lr=0: nothing changes, so epoch 1 stays best and patience 3 ends training at epoch 4.
    _, history, info = train.train_model(
        tr, val, 4, "both", {**CFG, "lr": 0.0, "patience": 3}, np.ones(4)
    )
    assert len(history) == 4 and info["best_epoch"] == 1

    seen = []
    module, history, info = train.train_model(
        tr, val, 4, "both", {**CFG, "patience": 2, "epochs": 100}, np.ones(4), on_epoch=seen.append
    )
    assert seen == history and len(history) < 100
    assert len(history) - info["best_epoch"] == 2
    best = max(history, key=lambda r: (r["val_macro_f1"], -r["val_loss"]))
    assert best["epoch"] == info["best_epoch"]
    # The returned module is the best epoch's, not the last one's.
    proba = predict_proba(module, val["text"], val["image"])
    pred = proba.argmax(axis=1)
    from sklearn.metrics import f1_score

    assert f1_score(val["label"].numpy(), pred, average="macro") == pytest.approx(
        best["val_macro_f1"]
    )


def test_same_seed_same_result_other_seed_differs() -> None:
    tr, val = make_split(20, seed=1, separation=0.5), make_split(10, seed=2, separation=0.5)
    cfg = {**CFG, "epochs": 6, "patience": 6, "dropout": 0.3}
    runs = [train.train_model(tr, val, 4, "both", cfg, np.ones(4)) for _ in range(2)]
    assert runs[0][1] == runs[1][1]
    for key, value in runs[0][0].state_dict().items():
        assert torch.equal(value, runs[1][0].state_dict()[key]), key
    other = train.train_model(tr, val, 4, "both", {**cfg, "seed": 8}, np.ones(4))
    assert other[1] != runs[0][1]


def test_empty_validation_split_is_an_error() -> None:
    tr = make_split(5, seed=1)
    empty = {k: v[:0] for k, v in tr.items()}
    with pytest.raises(ValueError, match="validation split is empty"):
        train.train_model(tr, empty, 4, "both", CFG, np.ones(4))


def _params(root, **overrides) -> None:
    params = {
        "weights": "auto",
        "modality": "both",
        "manual_weights": {
            "urgent_help": 4.0,
            "relief_info": 1.0,
            "misinformation": 1.0,
            "irrelevant": 1.0,
        },
        "train": {**CFG, "epochs": 8},
    }
    grouping = {"near_duplicate_bits": 30, "min_shared_words": 4}  # read by train (CV folds)
    params["prepare"] = grouping | overrides.pop("prepare", {})
    params.update(overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")


def test_main_writes_model_and_dvclive_logs(tmp_path, monkeypatch) -> None:
    write_features(tmp_path, {"train": [20, 10, 10, 5], "val": 5, "test": 5})
    _params(tmp_path, weights="manual")
    monkeypatch.chdir(tmp_path)
    train.main()
    module, meta = load_model(tmp_path / "models")
    assert meta["classes"] == CLASSES and meta["weights"] == "manual"
    assert meta["class_weights"] == {
        "urgent_help": 4.0,
        "relief_info": 1.0,
        "misinformation": 1.0,
        "irrelevant": 1.0,
    }
    assert meta["dims"] == {"text": 24, "image": 40} and meta["encoder"] == "synthetic"
    assert meta["standardisation"]["rows"] == 45
    stats = load_file(str(tmp_path / "models" / "mlp.safetensors"))
    train_text = load_file(str(tmp_path / "features" / "train.safetensors"))["text"]
    assert torch.allclose(stats["text_mean"], train_text.mean(0), atol=1e-4)
    logs = tmp_path / "reports" / "train"
    val_f1 = pd.read_csv(logs / "plots" / "metrics" / "val" / "macro_f1.tsv", sep="\t")
    assert val_f1["step"].tolist() == list(range(1, meta["epochs_run"] + 1))
    summary = json.loads((logs / "metrics.json").read_text())
    assert summary["best_epoch"] == meta["best_epoch"]
    assert summary["val"]["macro_f1"] == meta["best_val_macro_f1"]
    assert summary["val"]["macro_f1"] == val_f1["macro_f1"][meta["best_epoch"] - 1]
    assert not (tmp_path / "dvc.yaml").exists()  # dvclive must leave the pipeline file alone


def test_main_rejects_a_bad_weights_value(tmp_path, monkeypatch) -> None:
    write_features(tmp_path)
    _params(tmp_path, weights="inverse")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match="weights='inverse'"):
        train.main()


def test_main_records_what_shaped_the_inputs(tmp_path, monkeypatch) -> None:
    """model.json carries prepare's classes and input settings and the encoder's fingerprint,
    so predict and evaluate can follow the model instead of today's params.yaml."""
    write_features(tmp_path, {"train": 10, "val": 4, "test": 4})
    settings = {"strip_urls": False, "max_side": 300, "dummy_size": 64}
    (tmp_path / "dataset" / "input.json").write_text(json.dumps(settings))
    _params(tmp_path, prepare={"strip_urls": True, "max_side": 448, "dummy_size": 224})
    monkeypatch.chdir(tmp_path)
    train.main()
    _, meta = load_model(tmp_path / "models")
    assert meta["input"] == settings  # dataset/input.json, not params.yaml's prepare block
    assert meta["classes"] == CLASSES and meta["fingerprint"] == "test"


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("classes.json", json.dumps(["a", "b", "c", "d"]), r"stale; re-run featurize"),
        (
            "input.json",
            json.dumps({"strip_urls": 1, "max_side": 448, "dummy_size": 224}),
            r"input\.json: expected the keys and types",
        ),
        (
            "input.json",
            json.dumps({"strip_urls": True, "max_side": 448}),
            r"input\.json: expected the keys and types",
        ),
        ("input.json", None, r"input\.json: missing \(run the prepare stage first\)"),
    ],
)
def test_main_refuses_stale_or_bad_prepare_records(
    tmp_path, monkeypatch, name, content, message
) -> None:
    write_features(tmp_path, {"train": 10, "val": 4, "test": 4})
    path = tmp_path / "dataset" / name
    path.unlink() if content is None else path.write_text(content)
    _params(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train.main()
    assert not (tmp_path / "models").exists()


def test_auto_weight_power_tempers_inverse_frequency() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2] * 2 + [3] * 1)
    np.testing.assert_allclose(
        loss.class_weights("auto", labels, CLASSES, power=0.5), np.sqrt([0.5, 1.0, 1.5, 3.0])
    )
    np.testing.assert_allclose(loss.class_weights("auto", labels, CLASSES, power=0), 1.0)
    with pytest.raises(ParamsError, match="auto_weight_power=2"):
        loss.class_weights("auto", labels, CLASSES, power=2)


def test_fit_calibrates_on_validation() -> None:
    tr, val = make_split(30, seed=1, separation=0.6), make_split(30, seed=2, separation=0.6)
    module, _, info = train.fit(tr, val, 4, "both", {**CFG, "epochs": 15}, np.ones(4))
    assert info["selection"] == "validation split" and info["fit_rows"] == 120
    assert float(module.temperature) == pytest.approx(info["temperature"]) != 1.0
    assert info["val_nll_calibrated"] <= info["val_nll_uncalibrated"]


def test_small_data_cross_validates_on_train_and_val_then_refits_on_all() -> None:
    tr, val = make_split(12, seed=1, separation=0.8), make_split(3, seed=2, separation=0.8)
    cfg = {**CFG, "epochs": 12, "patience": 4, "cv_folds": 3, "cv_max_rows": 100}
    seen: list = []
    module, history, info = train.fit(tr, val, 4, "both", cfg, np.ones(4), on_epoch=seen.append)
    assert info["selection"].startswith("3-fold cross-validation") and info["fit_rows"] == 60
    assert seen == history and len(info["fold_best_epochs"]) == 3
    # The epoch count is the argmax of the fold-mean held-out macro-F1 curve.
    assert info["best_epoch"] == int(np.argmax([r["val_macro_f1"] for r in history])) + 1
    # Refitted on all 60 rows: the standardisation statistics are theirs.
    pool = torch.cat([tr["text"], val["text"]])
    assert torch.allclose(module.text_mean, pool.mean(0), atol=1e-4)
    # Negative control: above cv_max_rows the single validation split is used.
    _, _, single = train.fit(tr, val, 4, "both", {**cfg, "cv_max_rows": 59}, np.ones(4))
    assert single["selection"] == "validation split" and single["fit_rows"] == 48


def test_main_saves_the_temperature_and_the_selection(tmp_path, monkeypatch) -> None:
    write_features(tmp_path, {"train": 10, "val": 4, "test": 4})
    # The split CSVs the grouped folds read: every post its own text, all on the white dummy.
    dummy = f"images_train/{encode_jpeg(white_image(INPUT['dummy_size']))[0]}.jpg"
    for split, name in (("train", "train_balanced.csv"), ("val", "val.csv")):
        ids = load_file(str(tmp_path / "features" / f"{split}.safetensors"))["id"].numpy()
        pd.DataFrame(
            {
                "id": ids,
                "text": [f"post number {i} says this" for i in ids],
                "image_path": dummy,
                "label": "x",
            }
        ).to_csv(tmp_path / "dataset" / name, index=False)
    _params(
        tmp_path,
        train={
            **CFG,
            "epochs": 6,
            "cv_folds": 2,
            "cv_max_rows": 1000,
            "auto_weight_power": 0.5,
            "cv_model": "ensemble",
        },
        prepare={"near_duplicate_bits": 30, "min_shared_words": 4},
    )
    monkeypatch.chdir(tmp_path)
    train.main()
    module, meta = load_model(tmp_path / "models")
    assert meta["selection"] == (
        "2-fold cross-validation on train+val (56 rows, grouped "
        "folds), the fold models kept as an ensemble"
    )
    assert meta["standardisation"]["rows"] == 56 and meta["architecture"]["members"] == 2
    assert float(module.temperature) == pytest.approx(meta["temperature"])
    summary = json.loads((tmp_path / "reports" / "train" / "metrics.json").read_text())
    assert summary["temperature"] == pytest.approx(meta["temperature"])


def test_ensemble_keeps_the_fold_models_and_round_trips(tmp_path) -> None:
    tr, val = make_split(12, seed=1, separation=0.8), make_split(3, seed=2, separation=0.8)
    cfg = {
        **CFG,
        "epochs": 8,
        "patience": 3,
        "cv_folds": 3,
        "cv_max_rows": 100,
        "cv_model": "ensemble",
    }
    module, _, info = train.fit(tr, val, 4, "both", cfg, np.ones(4))
    assert info["selection"].endswith("the fold models kept as an ensemble")
    assert len(module.members) == 3 and module.config["members"] == 3
    test = make_split(5, seed=4, separation=0.8)
    proba = predict_proba(module, test["text"], test["image"])
    # Its logits are the mean of the members' (over the shared temperature).
    with torch.no_grad():
        mean = torch.stack([m(test["text"], test["image"]) for m in module.members]).mean(0)
    np.testing.assert_allclose(
        proba, torch.softmax(mean.double() / float(module.temperature), 1), atol=1e-6
    )
    assert not np.allclose(proba, predict_proba(module.members[0], test["text"], test["image"]))
    save_model(tmp_path, module, {"classes": CLASSES})
    loaded, meta = load_model(tmp_path)
    assert meta["architecture"]["members"] == 3
    np.testing.assert_allclose(predict_proba(loaded, test["text"], test["image"]), proba, atol=1e-7)
    assert torch.allclose(
        loaded.text_mean, torch.stack([m.text_mean for m in module.members]).mean(0)
    )


def test_too_few_groups_for_the_folds_fall_back_to_the_validation_split(caplog) -> None:
    tr, val = make_split(12, seed=1, separation=0.8), make_split(3, seed=2, separation=0.8)
    cfg = {**CFG, "epochs": 4, "patience": 2, "cv_folds": 3, "cv_max_rows": 100}
    two_groups = np.arange(60) % 2  # e.g. one picture shared by every other post
    _, _, info = train.fit(tr, val, 4, "both", cfg, np.ones(4), groups=lambda: two_groups)
    assert info["selection"] == "validation split"
    assert "2 groups over train+val, fewer than cv_folds=3" in caplog.text
    _, _, info = train.fit(
        tr, val, 4, "both", cfg, np.ones(4), groups=lambda: np.arange(60) % 3
    )  # negative control: 3 suffice
    assert info["selection"].startswith("3-fold cross-validation")
