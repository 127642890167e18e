"""predict: new posts take the training path (prepare's cleaning and image store, the model's
own encoder, featurize's batching), on a real tiny pipeline built from the shipped sample."""

from __future__ import annotations

import io
import json
import re
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from stages import csvsafe, featurize, predict, predictor, prepare, train
from stages.encoders import load_encoder
from stages.model import load_model, predict_proba, read_features

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "dataset" / "raw"
IMAGES = RAW / "images"
pytestmark = pytest.mark.slow  # one real prepare -> featurize -> train run, ~20-40 s on 2 cores

PER_CLASS = 10
_encoders: dict[str, object] = {}


def cached_load_encoder(cfg, device=None):
    """The real load_encoder, loaded once per configuration for the whole module."""
    key = repr(cfg)  # a frozen dataclass: its repr names every setting
    if key not in _encoders:
        _encoders[key] = load_encoder(cfg, device)
    return _encoders[key]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """prepare -> featurize -> train on a few posts per class of the shipped crisis4 sample."""
    if not (RAW / "crisis4_sample.csv").is_file():
        pytest.skip("the shipped sample dataset/raw/crisis4_sample.csv is missing")
    work = tmp_path_factory.mktemp("predict")
    sample = pd.read_csv(RAW / "crisis4_sample.csv", dtype=str, keep_default_na=False)
    posts = pd.concat([g.head(PER_CLASS) for _, g in sample.groupby("label")])
    # Fixed splits (the csv source's `split` column), so that the test split surely holds
    # replies: a text starting with '@' is formula-escaped in prepare's CSVs.
    position = posts.groupby("label").cumcount()
    wanted = pd.Series(
        np.select([posts["text"].str.startswith("@") | (position >= 8), position >= 6], [2, 1], 0),
        index=posts.index,
    )
    # Posts of one picture share a split (prepare would drop the later copies as leaks).
    side = wanted.groupby(posts["image_path"]).transform("max")
    posts["split"] = side.map({0: "train", 1: "val", 2: "test"})
    (work / "dataset" / "raw").mkdir(parents=True)
    posts.to_csv(work / "dataset" / "raw" / "crisis4_sample.csv", index=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["sources"] = [
        {
            "name": "crisis4_sample",
            "format": "csv",
            "path": "dataset/raw/crisis4_sample.csv",
            "image_root": str(IMAGES),
        }
    ]
    params["prepare"].update(balance="none", per_class_small=5)
    # fp32: with bf16 autocast a text's vector moves ~1e-3 with its batch-mates' padding,
    # which a 1e-5 comparison with the stored features would see.
    params["featurize"].update(batch_size=8, num_workers=0)
    params["featurize"]["offline"].update(image_size=128, bf16=False)
    params["train"].update(epochs=15, patience=5, hidden=[32, 16])
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(featurize, "load_encoder", cached_load_encoder)
        prepare.main([])
        featurize.main()
        train.main()
    return work


@pytest.fixture(autouse=True)
def _shared_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predictor, "load_encoder", cached_load_encoder)


def run(work: Path, *args: str, model_dir: Path | None = None) -> None:
    predict.main(
        [
            *args,
            "--params",
            str(work / "params.yaml"),
            "--model-dir",
            str(model_dir or work / "models"),
        ]
    )


def single(work: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[str, dict, str]:
    run(work, *args)
    out = capsys.readouterr().out
    probs = dict(re.findall(r"^  (\w+) +([0-9.]+)$", out, re.MULTILINE))
    return (
        re.search(r"^predicted: (\w+)$", out, re.MULTILINE)[1],
        {k: float(v) for k, v in probs.items()},
        re.search(r"^image: (.*)$", out, re.MULTILINE)[1],
    )


def test_single_post_prints_the_class_and_one_probability_per_class(pipeline, capsys) -> None:
    image = next(IMAGES.rglob("*.jpg"))
    label, probs, status = single(
        pipeline,
        capsys,
        "--text",
        "Family trapped on a roof, send a boat #flood http://t.co/x",
        "--image",
        str(image),
    )
    classes = json.loads((pipeline / "dataset" / "classes.json").read_text())
    assert list(probs) == classes
    assert sum(probs.values()) == pytest.approx(1.0, abs=5e-4)  # printed to 4 decimals
    assert label == max(probs, key=probs.get)
    assert status == "ok"


def test_explain_says_which_words_and_region_drove_the_prediction(
    pipeline, capsys, tmp_path
) -> None:
    image = next(IMAGES.rglob("*.jpg"))
    text = "Family trapped on a roof, send a boat #flood http://t.co/x"
    run(pipeline, "--text", text, "--image", str(image), "--explain")
    out = capsys.readouterr().out
    label = re.search(r"^predicted: (\w+)$", out, re.MULTILINE)[1]
    why = re.search(r"^why (\w+): text (\d+)%, image (\d+)% of the prediction$", out, re.MULTILINE)
    assert why and why[1] == label and int(why[2]) + int(why[3]) in (99, 100, 101)
    words = re.search(r"^  words: (.*)$", out, re.MULTILINE)[1]
    assert {w.split(" (")[0] for w in words.split(", ")} <= set(text.split())  # cleaned words
    region = re.search(
        r"^  image: strongest region row (\d), column (\d) of (\d)x\3", out, re.MULTILINE
    )  # the feature map's grid (4x4 for this 128-px fixture)
    assert (
        region and 1 <= int(region[1]) <= int(region[3]) and 1 <= int(region[2]) <= int(region[3])
    )
    # CSV: the explanation's class is the prediction's, post by post; no picture says so.
    posts = tmp_path / "posts.csv"
    pd.DataFrame(
        {"text": [text, "Shelter open at the school"], "image_path": [image.name, ""]}
    ).to_csv(posts, index=False)
    run(
        pipeline,
        "--csv",
        str(posts),
        "--out",
        str(tmp_path / "out.csv"),
        "--image-root",
        str(image.parent),
        "--explain",
    )
    result = pd.read_csv(tmp_path / "out.csv")
    found = [json.loads(e) for e in result["explanation"]]
    assert [f["predicted"] for f in found] == result["predicted"].tolist()
    assert [f["no_image"] for f in found] == [False, True]


def test_a_post_without_a_usable_image_gets_prepares_white_dummy_and_says_so(
    pipeline, capsys, tmp_path
) -> None:
    _, no_image, status = single(pipeline, capsys, "--text", "Shelter open at the school")
    assert status == "white_dummy:no_path (no usable image: prepare's dummy)"
    _, missing, status = single(
        pipeline,
        capsys,
        "--text",
        "Shelter open at the school",
        "--image",
        str(tmp_path / "gone.jpg"),
    )
    assert status.startswith("white_dummy:missing")
    # A real white picture of the dummy's size stores as the very same JPEG, so it must score
    # exactly like the dummy: the replacement is prepare's own, not an approximation.
    size = yaml.safe_load((pipeline / "params.yaml").read_text())["prepare"]["dummy_size"]
    Image.new("RGB", (size, size), "white").save(tmp_path / "white.png")
    _, white, status = single(
        pipeline,
        capsys,
        "--text",
        "Shelter open at the school",
        "--image",
        str(tmp_path / "white.png"),
    )
    assert status == "ok" and no_image == missing == white


@pytest.fixture(scope="module")
def csv_run(pipeline: Path) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The raw source rows of the test split (id = ledger id) plus three odd posts, classified
    with --csv; returns input, output and the terminal output."""
    ledger = csvsafe.read_csv(pipeline / "reports" / "prepare_ledger.csv")
    test_ids = csvsafe.read_csv(pipeline / "dataset" / "test_balanced.csv")[["id"]]
    raw = pd.read_csv(
        pipeline / "dataset" / "raw" / "crisis4_sample.csv", dtype=str, keep_default_na=False
    )
    rows = test_ids.merge(ledger, left_on="id", right_on="ledger_id").merge(
        raw, left_on="row_id", right_on="post_id"
    )[["id", "text", "image_path", "label"]]
    odd = pd.DataFrame(
        {
            "id": [9001, 9002, 9003],
            "label": ["relief_info"] * 3,
            "text": ['=HYPERLINK("x") donate here', "no picture", "escaping path"],
            "image_path": [rows["image_path"][0], "missing/none.jpg", "../../x.jpg"],
        }
    )
    posts = pd.concat([rows, odd], ignore_index=True)
    csv_in, csv_out = pipeline / "posts.csv", pipeline / "out" / "predictions.csv"
    csvsafe.write_csv(posts, csv_in)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(printed):
        mp.setattr(predictor, "load_encoder", cached_load_encoder)
        run(pipeline, "--csv", str(csv_in), "--out", str(csv_out), "--image-root", str(IMAGES))
    return posts, csvsafe.read_csv(csv_out, int_columns=("id",)), printed.getvalue()


def test_csv_writes_one_row_per_post_with_its_probabilities(csv_run, pipeline) -> None:
    posts, out, printed = csv_run
    classes = json.loads((pipeline / "dataset" / "classes.json").read_text())
    prob_columns = [f"prob_{c}" for c in classes]
    assert list(out.columns) == [*posts.columns, "image_status", "predicted", *prob_columns]
    assert len(out) == len(posts)
    pd.testing.assert_frame_equal(out[posts.columns], posts)  # inputs kept, formula included
    np.testing.assert_allclose(out[prob_columns].astype(float).sum(axis=1), 1.0, atol=1e-5)
    assert (
        out["predicted"] == out[prob_columns].astype(float).idxmax(axis=1).str.removeprefix("prob_")
    ).all()
    assert out["image_status"].tolist()[-3:] == [
        "ok",
        "white_dummy:missing",
        "white_dummy:path_escape",
    ]
    assert (out["image_status"][:-3] == "ok").all()
    assert "2 with no usable image got prepare's white dummy" in printed
    written = (pipeline / "out" / "predictions.csv").read_text()
    assert "'=HYPERLINK" in written and not re.search(r'(^|,)"?=', written, re.MULTILINE)
    labelled = out[out["label"].isin(classes)]
    accuracy = (labelled["label"] == labelled["predicted"]).mean()
    assert f"against the label column ({len(out)} rows): accuracy {accuracy:.4f}" in printed


def test_test_rows_score_exactly_as_evaluate_scores_their_stored_features(
    csv_run, pipeline
) -> None:
    """Raw source rows through predict (cleaning, image normalisation, encoder, model) give the
    probabilities evaluate computes from features/test.safetensors for the same rows."""
    posts, out, _ = csv_run
    module, meta = load_model(pipeline / "models")
    test = read_features(pipeline / "features" / "test.safetensors")
    expected = predict_proba(module, test["text"], test["image"])
    got = out.set_index("id").loc[test["id"].numpy(), [f"prob_{c}" for c in meta["classes"]]]
    assert len(got) == len(test["id"]) >= 8
    np.testing.assert_allclose(got.astype(float).to_numpy(), expected, atol=1e-5, rtol=0)
    # The rows cover the cleaning that matters: URLs, and a reply whose '@' prepare's CSV
    # escapes (featurize once embedded the escape itself).
    raw = posts[posts["id"] < 9000]["text"]
    assert raw.str.startswith("@").any() and raw.str.contains("http").any()


def test_a_missing_model_is_refused_with_the_command_to_make_one(pipeline, tmp_path) -> None:
    with pytest.raises(SystemExit, match=r"model\.json not found.*run `dvc repro`"):
        run(pipeline, "--text", "help", model_dir=tmp_path / "models")


def test_an_encoder_other_than_the_models_is_refused_naming_both(pipeline, tmp_path) -> None:
    models = shutil.copytree(pipeline / "models", tmp_path / "models")
    meta = json.loads((models / "model.json").read_text())
    trained = meta["fingerprint"]
    meta["fingerprint"] = "f00d" * 16
    (models / "model.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit) as refused:
        run(pipeline, "--text", "help", model_dir=models)
    message = str(refused.value)
    assert "encoder mismatch" in message and "f00df00df00d" in message
    assert trained[:12] in message and "dvc repro" in message

    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    params["featurize"]["encoder"] = "clip"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"trained with 'offline' .* gives 'clip'"):
        predict.main(
            [
                "--text",
                "help",
                "--params",
                str(tmp_path / "params.yaml"),
                "--model-dir",
                str(pipeline / "models"),
            ]
        )


def test_a_csv_without_the_needed_columns_is_refused(pipeline, tmp_path) -> None:
    (tmp_path / "posts.csv").write_text("tweet,image_path\nhello,a.jpg\n")
    with pytest.raises(SystemExit, match=r"posts\.csv: no column \['text'\]"):
        run(pipeline, "--csv", str(tmp_path / "posts.csv"), "--out", str(tmp_path / "o.csv"))


def _probs(params: Path, model_dir: Path, capsys, *args: str) -> dict:
    predict.main([*args, "--params", str(params), "--model-dir", str(model_dir)])
    out = capsys.readouterr().out
    return {k: float(v) for k, v in re.findall(r"^  (\w+) +([0-9.]+)$", out, re.MULTILINE)}


def test_predict_follows_the_model_not_todays_params(pipeline, capsys, tmp_path) -> None:
    """An edit of params.yaml's prepare (or train) block after training changes nothing; the
    input settings recorded in model.json do (negative control: predict reads them)."""
    image = next(IMAGES.rglob("*.jpg"))
    post = [
        "--text",
        "Family trapped on a roof, send a boat http://t.co/abc #flood",
        "--image",
        str(image),
    ]
    before = _probs(pipeline / "params.yaml", pipeline / "models", capsys, *post)
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    params["prepare"].update(strip_urls=False, max_side=64, dummy_size=32)
    params["train"].update(lr=0.5, hidden=[8, 8])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _probs(tmp_path / "params.yaml", pipeline / "models", capsys, *post) == before

    models = shutil.copytree(pipeline / "models", tmp_path / "models")
    meta = json.loads((models / "model.json").read_text())
    assert meta["input"] == json.loads((pipeline / "dataset" / "input.json").read_text())
    meta["input"] = {**meta["input"], "strip_urls": False, "max_side": 64}
    (models / "model.json").write_text(json.dumps(meta))
    assert _probs(pipeline / "params.yaml", models, capsys, *post) != before

    del meta["input"]
    (models / "model.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match=r"does not record the input settings.*retrain"):
        _probs(pipeline / "params.yaml", models, capsys, *post)


def test_no_stage_module_imports_another() -> None:
    """predict and the stages share code through helper modules only (ast, not grep)."""
    import ast

    entry = {"prepare", "featurize", "train", "evaluate", "predict", "explain"}
    for name in ("predict", "train", "evaluate"):
        tree = ast.parse((ROOT / "stages" / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {
            f"stages.{a.name}"
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module == "stages"
            for a in n.names
        }
        assert not {m.removeprefix("stages.") for m in imported} & (entry - {name}), name
