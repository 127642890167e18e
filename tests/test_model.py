"""The network module: standardisation buffers, fusion variants, save/load, predict_proba."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from synthetic_features import make_split

from stages.model import FusionMLP, load_model, predict_proba, read_features, save_model

DIMS = {"text": 6, "image": 10}


def _features(n: int = 50, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "text": torch.randn(n, 6, generator=g) * 3 + 7,
        "image": torch.randn(n, 10, generator=g) * 0.5 - 2,
    }


def test_standardisation_uses_training_statistics_and_guards_constant_features() -> None:
    feats = _features()
    feats["image"][:, 0] = 4.0  # constant, like a white dummy image's features
    model = FusionMLP(DIMS, 4)
    model.set_standardisation(feats)
    z = (feats["text"] - model.text_mean) / model.text_std
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(6), atol=1e-4)
    assert model.image_std[0] == 1.0 and model.image_mean[0] == 4.0


@pytest.mark.parametrize(
    "modality,fusion",
    [("both", "concat"), ("both", "gated"), ("text", "concat"), ("image", "gated")],
)
def test_forward_shapes_and_modality_inputs(modality: str, fusion: str) -> None:
    model = FusionMLP(DIMS, 3, modality, fusion, hidden=[8, 4], dropout=0.0).eval()
    feats = _features(5)
    out = model(feats["text"], feats["image"])
    assert out.shape == (5, 3)
    if modality != "both":
        # The unused modality is neither needed nor looked at.
        other = "image" if modality == "text" else "text"
        alone = model(**{modality: feats[modality], other: None})
        assert torch.equal(alone, out)
        assert model.fusion == "concat"
        assert f"{other}_mean" not in model.state_dict()
    else:
        assert model.fusion == fusion
        with pytest.raises(ValueError, match="'image' features are required"):
            model(feats["text"], None)


def test_save_load_round_trip_is_self_contained(tmp_path) -> None:
    feats = _features()
    model = FusionMLP(DIMS, 4, "both", "gated", hidden=[8, 4], dropout=0.2)
    model.set_standardisation(feats)
    model.eval()
    save_model(tmp_path, model, {"classes": ["a", "b", "c", "d"], "weights": "none"})
    stored = load_file(str(tmp_path / "mlp.safetensors"))
    assert {"text_mean", "text_std", "image_mean", "image_std"} <= set(stored)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["classes"] == ["a", "b", "c", "d"] and meta["architecture"]["fusion"] == "gated"
    loaded, meta2 = load_model(tmp_path)
    assert meta2 == meta and not loaded.training
    expected = predict_proba(model, feats["text"].numpy(), feats["image"].numpy())
    got = predict_proba(loaded, feats["text"].numpy(), feats["image"].numpy())
    np.testing.assert_array_equal(got, expected)
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_model_names_missing_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path)


def test_predict_proba_batches_and_validates() -> None:
    model = FusionMLP(DIMS, 4, hidden=[8, 4]).eval()
    feats = _features(37)
    whole = predict_proba(model, feats["text"], feats["image"])
    batched = predict_proba(model, feats["text"], feats["image"], batch_size=5)
    assert whole.shape == (37, 4) and whole.dtype == np.float64
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(batched, whole, atol=1e-6)
    assert predict_proba(model, feats["text"][:0], feats["image"][:0]).shape == (0, 4)
    with pytest.raises(ValueError, match=r"expects \[N, 10\]"):
        predict_proba(model, feats["text"], feats["image"][:, :9])
    with pytest.raises(ValueError, match="row count"):
        predict_proba(model, feats["text"], feats["image"][:5])
    with pytest.raises(ValueError, match="'text' features are required"):
        predict_proba(model, None, feats["image"])


def test_constructor_rejects_unknown_options() -> None:
    with pytest.raises(ValueError, match="modality"):
        FusionMLP(DIMS, 4, modality="audio")
    with pytest.raises(ValueError, match="fusion"):
        FusionMLP(DIMS, 4, fusion="attention")
    with pytest.raises(ValueError, match="two layer sizes"):
        FusionMLP(DIMS, 4, hidden=[8])


def test_read_features_accepts_contract_and_rejects_deviations(tmp_path) -> None:
    good = make_split(3, dims=(4, 5))
    path = tmp_path / "train.safetensors"
    save_file(good, str(path))
    assert set(read_features(path, 4)) == {"text", "image", "label", "id"}
    with pytest.raises(ValueError, match="labels outside 0..2"):
        read_features(path, 3)
    with pytest.raises(ValueError, match="'image' is 5-d but meta.json says 6"):
        read_features(path, 4, {"text": 4, "image": 6})
    cases = {
        "no 'id' tensor": {k: v for k, v in good.items() if k != "id"},
        "'label' is torch.int32": {**good, "label": good["label"].int()},
        "'image' has shape": {**good, "image": good["image"][:5]},
        "NaN/inf values": {
            **good,
            "text": good["text"].clone().index_fill_(0, torch.tensor([2]), float("nan")),
        },
    }
    for message, tensors in cases.items():
        save_file(tensors, str(path))
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            read_features(path)
    with pytest.raises(FileNotFoundError, match="featurize"):
        read_features(tmp_path / "absent.safetensors")
