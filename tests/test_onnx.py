"""The offline encoder's ONNX runtime: the same vectors as PyTorch on real posts, the same bits
whatever the threads and batch, an export cache that a second load reuses and that a failed or
damaged export cannot poison, and settings that are refused with the key named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from shipped_params import featurize_cfg

from stages.encoders import EncoderError, load_encoder, onnx_graph
from stages.images import load_image
from stages.params import ParamsError

RAW = Path(__file__).resolve().parents[1] / "dataset" / "raw"
POSTS = 6  # real posts of the shipped sample: a handful keeps the test fast


def encoder(runtime: str, **extra) -> object:
    return load_encoder(
        featurize_cfg(
            {"encoder": "offline", "offline": {"image_size": 224, "runtime": runtime, **extra}}
        ),
        torch.device("cpu"),
    )


@pytest.fixture(scope="module")
def runtimes() -> dict[str, object]:
    return {name: encoder(name) for name in ("onnx", "torch")}


@pytest.fixture(scope="module")
def posts() -> tuple[list[str], torch.Tensor]:
    """Texts and preprocessed images of real posts, the images normalised as prepare does."""
    sample = RAW / "crisis4_sample.csv"
    if not sample.is_file():
        pytest.skip("the shipped sample dataset/raw/crisis4_sample.csv is missing")
    frame = pd.read_csv(sample, dtype=str, keep_default_na=False)
    texts, images = [], []
    for _, row in frame.drop_duplicates("image_path").iterrows():
        loaded = load_image(row["image_path"], RAW / "images", max_side=448)
        if loaded.image is not None:
            texts.append(row["text"])
            images.append(loaded.image)
        if len(images) == POSTS:
            break
    from stages.encoders.offline import LitePreprocess

    return texts, torch.stack([LitePreprocess(224)(image) for image in images])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_onnx_vectors_match_pytorch_on_real_posts(runtimes, posts) -> None:
    texts, pixels = posts
    onnx, eager = (runtimes[k].encode_images(pixels) for k in ("onnx", "torch"))
    assert onnx.shape == (POSTS, 1280) and onnx.dtype == np.float32
    assert cosine(onnx, eager).min() >= 0.9999
    assert np.abs(onnx - eager).max() < 1e-3
    # A control: other posts' vectors are far from these (the check can fail).
    assert cosine(onnx, np.roll(eager, 1, axis=0)).max() < 0.99
    onnx, eager = (runtimes[k].encode_text(texts) for k in ("onnx", "torch"))
    assert onnx.shape == (POSTS, 384) and onnx.dtype == np.float32
    assert cosine(onnx, eager).min() >= 0.9999 and np.abs(onnx - eager).max() < 1e-4
    assert cosine(onnx, np.roll(eager, 1, axis=0)).max() < 0.99


def test_onnx_vectors_do_not_depend_on_threads_or_batch(runtimes, posts) -> None:
    """What lets N featurize processes (1 thread each) write the file 1 process writes."""
    texts, pixels = posts
    onnx = runtimes["onnx"]
    batch, text = onnx.encode_images(pixels), onnx.encode_text(texts)
    one_by_one = np.concatenate([onnx.encode_images(pixels[i : i + 1]) for i in range(POSTS)])
    np.testing.assert_array_equal(one_by_one, batch)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the sessions take torch's thread count when built
        single = encoder("onnx")
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    np.testing.assert_array_equal(single.encode_images(pixels), batch)
    np.testing.assert_array_equal(single.encode_text(texts), text)
    assert single.fingerprint() == onnx.fingerprint()


def test_fingerprint_names_the_runtime_and_its_versions(runtimes, monkeypatch) -> None:
    onnx, eager = runtimes["onnx"], runtimes["torch"]
    assert onnx.fingerprint() != eager.fingerprint()
    assert onnx.settings["runtime"] == "onnx" and "onnxruntime" in onnx.settings["onnx"]
    key = {"weights": "w", "image_size": 224}
    path = onnx_graph.graph_path("net", key)
    monkeypatch.setattr(onnx_graph, "versions", lambda: {"onnxruntime": "0.0.0"})
    assert onnx_graph.graph_path("net", key) != path  # another runtime: another graph file


def test_bf16_and_unknown_runtimes_are_refused_naming_the_key() -> None:
    with pytest.raises(ParamsError, match=r"featurize\.offline\.bf16: true needs .*runtime: torch"):
        encoder("onnx", bf16=True)
    with pytest.raises(
        ParamsError,
        match=r"featurize\.offline\.runtime='tensorrt' is not one "
        r"of onnx, torch",
    ):
        encoder("tensorrt")


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * 2


def build_doubler() -> tuple:
    return (Doubler(), (torch.zeros(2, 3),), ["x"], ["y"], ({0: torch.export.Dim("batch")},))


def test_export_is_cached_and_reused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(onnx_graph.CACHE_ENV, str(tmp_path))
    path = onnx_graph.graph_path("doubler", {"weights": "abc"})
    assert path.parent == tmp_path / "onnx"
    first = onnx_graph.cached_session(path, build_doubler, 1)
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    np.testing.assert_array_equal(first.run(None, {"x": x})[0], [[0.0, 1.0, 4.0]])
    stamp = path.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the graph is cached")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    again = onnx_graph.cached_session(path, build_doubler, 2)
    np.testing.assert_array_equal(again.run(None, {"x": x})[0], [[0.0, 1.0, 4.0]])
    assert path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no partial files


def test_a_failed_export_leaves_no_graph_and_a_damaged_one_is_redone(
    tmp_path, monkeypatch, caplog
) -> None:
    monkeypatch.setenv(onnx_graph.CACHE_ENV, str(tmp_path))
    path = onnx_graph.graph_path("doubler", {"weights": "abc"})
    real_export = torch.onnx.export

    def dies_halfway(module, args, f, **kwargs):
        Path(f).write_bytes(b"\x08\x07half a graph")
        raise RuntimeError("killed")

    monkeypatch.setattr(torch.onnx, "export", dies_halfway)
    with pytest.raises(EncoderError, match="exporting doubler-.*failed: killed"):
        onnx_graph.cached_session(path, build_doubler, 1)
    assert not path.parent.exists() or not list(path.parent.iterdir())
    monkeypatch.setattr(torch.onnx, "export", real_export)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a graph")  # a damaged cache file
    with caplog.at_level(logging.WARNING):
        fixed = onnx_graph.cached_session(path, build_doubler, 1)
    assert "does not load" in caplog.text and "exporting it again" in caplog.text
    np.testing.assert_array_equal(
        fixed.run(None, {"x": np.ones((1, 3), np.float32)})[0], [[2.0, 2.0, 2.0]]
    )


def test_the_explain_map_is_the_one_the_features_average(runtimes, posts) -> None:
    """stages/attribution.py reads `image_net.extract_features`: in the onnx runtime that is
    onnxruntime's map, so its average is the feature vector bit for bit."""
    _, pixels = posts
    onnx = runtimes["onnx"]
    maps = onnx.image_net.extract_features(pixels[:2])
    assert isinstance(onnx.image_net, torch.nn.Module) and maps.shape == (2, 1280, 7, 7)
    np.testing.assert_array_equal(
        maps.float().mean(dim=(2, 3)).numpy(), onnx.encode_images(pixels[:2])
    )
    json.dumps(onnx.settings)  # the settings that enter the fingerprint are plain JSON
