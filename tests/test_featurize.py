"""featurize: the output contract, one embedding per distinct input, resuming, sharing the work
between processes, clear errors, and the DVC stage declaration."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from launchers import LAUNCH_2CPU
from PIL import Image, ImageDraw
from safetensors.numpy import load_file
from shipped_params import featurize_cfg

from stages import featurize
from stages.csvsafe import write_csv
from stages.encoders import Encoder
from stages.feature_store import write_safetensors

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["urgent_help", "relief_info", "misinformation", "irrelevant"]
# (split, id, text, image number, label): images 0 and 2 are shared, text "help us" repeats.
POSTS = [
    ("train", 11, "people trapped on the roof, help us", 0, "urgent_help"),
    ("train", 12, "shelter open at the school", 1, "relief_info"),
    ("train", 13, "help us", 0, "urgent_help"),
    ("train", 14, "this photo is fake", 2, "misinformation"),
    ("train", 15, "lol", 3, "irrelevant"),
    ("val", 21, "help us", 2, "misinformation"),
    ("val", 22, "donations: water, food", 4, "relief_info"),
    ("test", 31, "bridge collapsed downtown", 5, "urgent_help"),
    ("test", 32, "", 5, "irrelevant"),
]
FILES = {"train": "train_balanced.csv", "val": "val.csv", "test": "test_balanced.csv"}


def make_dataset(root: Path) -> Path:
    """A tiny dataset/ laid out as prepare writes it (docs/DESIGN.md)."""
    dataset = root / "dataset"
    for n in range(6):
        folder = "images_test" if n == 5 else "images_train"
        image = Image.new("RGB", (160 + 40 * n, 120), (40 * n, 255 - 30 * n, 90))
        ImageDraw.Draw(image).ellipse((10 * n, 20, 60 + 10 * n, 100), fill=(250, 20 * n, 10))
        (dataset / folder).mkdir(parents=True, exist_ok=True)
        image.save(dataset / folder / f"{n}.png")
    for split, name in FILES.items():
        rows = [
            (i, text, f"{'images_test' if img == 5 else 'images_train'}/{img}.png", label)
            for s, i, text, img, label in POSTS
            if s == split
        ]
        pd.DataFrame(rows, columns=["id", "text", "image_path", "label"]).to_csv(
            dataset / name, index=False
        )
    (dataset / "classes.json").write_text(json.dumps(CLASSES))
    return dataset


def fake_preprocess(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.resize((8, 8)), np.float32)).permute(2, 0, 1)


class FakeEncoder(Encoder):
    """Deterministic, instant, counts its inputs, and can fail midway like a killed run."""

    name = model = "fake"
    text_dim, image_dim, device = 4, 3, torch.device("cpu")
    preprocess = staticmethod(fake_preprocess)

    def __init__(self, weights: str = "v1", fail_after_images: int | None = None) -> None:
        self.weights, self.fail_after = weights, fail_after_images
        self.seen: dict[str, list] = {"text": [], "image": []}

    def encode_text(self, texts: list[str]) -> np.ndarray:
        self.seen["text"] += texts
        return np.array(
            [
                np.frombuffer(hashlib.sha256(t.encode()).digest()[:16], np.uint32) / 2**32
                for t in texts
            ],
            np.float32,
        ).reshape(-1, 4)

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        if self.fail_after is not None and len(self.seen["image"]) >= self.fail_after:
            raise RuntimeError("killed")
        self.seen["image"] += [p.sum().item() for p in pixels]
        return pixels.mean(dim=(2, 3)).numpy()

    def fingerprint(self) -> str:
        return self.weights


def run_fake(
    root: Path,
    encoder: Encoder,
    shard_size: int = 2,
    ranks: tuple = ((0, 1),),
    num_workers: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Run the stage's core with `encoder`, each (rank, world) in turn, then assemble."""
    frames = {s: featurize.read_split(root / "dataset" / f, CLASSES) for s, f in FILES.items()}
    cfg = featurize_cfg(
        {
            "batch_size": 2,
            "text_batch_size": 3,
            "num_workers": num_workers,
            "shard_size": shard_size,
        }
    )
    for rank, world in ranks:
        texts, images = featurize.embed(frames, encoder, cfg, root / "work", rank, world)
    featurize.write_features(
        frames, texts, images, encoder, cfg, root / "work", root / "features", CLASSES
    )
    return {s: load_file(root / "features" / f"{s}.safetensors") for s in FILES}


def test_stage_writes_the_contract_deterministically(tmp_path: Path, monkeypatch) -> None:
    make_dataset(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["featurize"].update(encoder="offline", shard_size=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    featurize.main()
    first = {s: (tmp_path / "features" / f"{s}.safetensors").read_bytes() for s in FILES}
    meta = json.loads((tmp_path / "features" / "meta.json").read_text())
    assert meta["encoder"] == "offline" and meta["classes"] == CLASSES
    assert meta["dims"] == {"text": 384, "image": 1280} and len(meta["fingerprint"]) == 64
    assert meta["rows"] == {"train": 5, "val": 2, "test": 2}
    assert not (tmp_path / featurize.WORK_DIR).exists()
    train = load_file(tmp_path / "features" / "train.safetensors")
    assert {k: (v.dtype.name, v.shape) for k, v in train.items()} == {
        "text": ("float32", (5, 384)),
        "image": ("float32", (5, 1280)),
        "label": ("int64", (5,)),
        "id": ("int64", (5,)),
    }
    assert train["id"].tolist() == [11, 12, 13, 14, 15]
    assert train["label"].tolist() == [0, 1, 0, 2, 3]
    assert np.array_equal(train["image"][0], train["image"][2])  # shared image
    assert not np.array_equal(train["image"][0], train["image"][1])
    val = load_file(tmp_path / "features" / "val.safetensors")
    assert np.array_equal(val["text"][0], train["text"][2])  # same text across splits
    # The stage's vectors are the encoder's own for that post.
    from stages.encoders import load_encoder

    encoder = load_encoder(featurize_cfg(params["featurize"]), torch.device("cpu"))
    pixels = encoder.preprocess(Image.open(tmp_path / "dataset/images_train/1.png").convert("RGB"))
    np.testing.assert_allclose(encoder.encode_images(pixels[None])[0], train["image"][1], atol=1e-5)
    np.testing.assert_allclose(
        encoder.encode_text(["shelter open at the school"])[0], train["text"][1], atol=1e-2
    )
    featurize.main()  # a second run gives the same bytes
    assert first == {s: (tmp_path / "features" / f"{s}.safetensors").read_bytes() for s in FILES}


def test_torch_runtime_gives_the_onnx_features_within_tolerance(
    tmp_path: Path, monkeypatch
) -> None:
    """`-S featurize.offline.runtime=torch` still runs the stage; its features are the
    default (onnx) run's to cosine >= 0.9999, under another fingerprint."""
    out = {}
    for runtime in ("onnx", "torch"):
        root = tmp_path / runtime
        make_dataset(root)
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["featurize"]["offline"]["runtime"] = runtime
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        monkeypatch.chdir(root)
        featurize.main()
        out[runtime] = (
            {s: load_file(root / "features" / f"{s}.safetensors") for s in FILES},
            json.loads((root / "features" / "meta.json").read_text()),
        )
    (onnx, onnx_meta), (eager, eager_meta) = out["onnx"], out["torch"]
    assert onnx_meta["fingerprint"] != eager_meta["fingerprint"]
    for split in FILES:
        for kind in ("image", "text"):
            a, b = onnx[split][kind], eager[split][kind]
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            assert cos.min() >= 0.9999, (split, kind, cos)
        np.testing.assert_array_equal(onnx[split]["id"], eager[split]["id"])


def test_each_distinct_text_and_image_is_embedded_once(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    encoder = FakeEncoder()
    out = run_fake(tmp_path, encoder, num_workers=1)
    assert len(encoder.seen["image"]) == 6
    assert len(encoder.seen["text"]) == len({p[2] for p in POSTS}) == 8
    assert out["test"]["image"].shape == (2, 3) and out["test"]["text"].shape == (2, 4)
    np.testing.assert_array_equal(out["val"]["image"][0], out["train"]["image"][3])
    np.testing.assert_array_equal(out["test"]["text"][1], FakeEncoder().encode_text([""])[0])


def test_formula_escaped_cells_are_read_back_as_written(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    frame = pd.read_csv(dataset / "test_balanced.csv", dtype=str, keep_default_na=False)
    frame.loc[0, "text"] = '=HYPERLINK("x")'
    write_csv(frame, dataset / "test_balanced.csv")  # as prepare writes it: '=HYPERLINK...
    assert "'=HYPERLINK" in (dataset / "test_balanced.csv").read_text()
    out = run_fake(tmp_path, FakeEncoder())
    np.testing.assert_array_equal(
        out["test"]["text"][0], FakeEncoder().encode_text(['=HYPERLINK("x")'])[0]
    )


def test_an_empty_split_gives_empty_matrices(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    pd.read_csv(dataset / "val.csv").head(0).to_csv(dataset / "val.csv", index=False)
    out = run_fake(tmp_path, FakeEncoder())
    assert out["val"]["text"].shape == (0, 4) and out["val"]["image"].shape == (0, 3)
    assert out["val"]["id"].shape == (0,) and out["train"]["id"].tolist() == [11, 12, 13, 14, 15]


def test_a_killed_run_resumes_from_its_complete_shards(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    with pytest.raises(RuntimeError, match="killed"):
        run_fake(tmp_path, FakeEncoder(fail_after_images=4))  # shards of 2: dies in the third
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [
        "image-00000.safetensors",
        "image-00001.safetensors",
    ]
    resumed = FakeEncoder()
    out = run_fake(tmp_path, resumed)
    assert len(resumed.seen["image"]) == 2  # only the last shard's two images
    clean = tmp_path / "clean"
    make_dataset(clean)
    expected = run_fake(clean, FakeEncoder())
    for split in FILES:
        for key in expected[split]:
            np.testing.assert_array_equal(out[split][key], expected[split][key])
    changed = FakeEncoder(weights="v2")  # other weights: no shard may be reused
    run_fake(tmp_path, changed)
    assert len(changed.seen["image"]) == 6


def test_two_processes_give_the_same_file_as_one(tmp_path: Path) -> None:
    for name, ranks in (("one", ((0, 1),)), ("two", ((1, 2), (0, 2)))):
        make_dataset(tmp_path / name)
        encoder = FakeEncoder()
        run_fake(tmp_path / name, encoder, ranks=ranks)
        assert len(encoder.seen["image"]) == 6  # each shard by exactly one process
    for split in FILES:
        assert (tmp_path / "one/features" / f"{split}.safetensors").read_bytes() == (
            tmp_path / "two/features" / f"{split}.safetensors"
        ).read_bytes()


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("label", "rumour", r"val.csv data row 2 \(id '22', label 'rumour'\): label is not one of"),
        ("id", "x7", r"val.csv data row 2 \(id 'x7'.*id is not an integer"),
        ("image_path", "images_train/nope.png", r"val.csv data row 2: image .*nope.png does not"),
    ],
)
def test_bad_rows_are_named(tmp_path: Path, column: str, value: str, message: str) -> None:
    dataset = make_dataset(tmp_path)
    frame = pd.read_csv(dataset / "val.csv", dtype=str, keep_default_na=False)
    frame.loc[1, column] = value
    frame.to_csv(dataset / "val.csv", index=False)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        featurize.read_split(dataset / "val.csv", CLASSES)
    frame.drop(columns=["text"]).to_csv(dataset / "val.csv", index=False)
    with pytest.raises(ValueError, match=r"missing columns \['text'\]"):
        featurize.read_split(dataset / "val.csv", CLASSES)


def test_streamed_safetensors_file_is_standard(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    text, ids = rng.random((7, 5), np.float32), np.arange(7, dtype=np.int64) * 10
    shapes = {"text": (np.dtype("float32"), (7, 5)), "id": (np.dtype("int64"), (7,))}
    chunks = [(4, {"text": text[4:], "id": ids[4:]}), (0, {"text": text[:4], "id": ids[:4]})]
    write_safetensors(tmp_path / "f.safetensors", shapes, chunks, {"encoder": "x"})
    loaded = load_file(tmp_path / "f.safetensors")
    np.testing.assert_array_equal(loaded["text"], text)
    np.testing.assert_array_equal(loaded["id"], ids)
    with pytest.raises(RuntimeError, match="rows not written"):
        write_safetensors(tmp_path / "g.safetensors", shapes, chunks[:1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors"]  # no half file


def featurize_stage() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["featurize"]


def test_dvc_stage_reads_only_featurize_params_and_its_inputs() -> None:
    stage = featurize_stage()
    assert stage["params"] == ["featurize"]
    # Code deps are checked against the import closure in tests/test_deps.py; here the data.
    assert {"dataset/classes.json", "dataset/images_train", "dataset/images_test"} | {
        f"dataset/{name}" for name in FILES.values()
    } <= set(stage["deps"])
    assert stage["outs"] == ["features"]


def run(cmd: list[str], cwd: Path, **env: str) -> str:
    """stdout and stderr of a command that must succeed."""
    done = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def project_copy(root: Path) -> Path:
    """A git + DVC project holding the stage code, params.yaml, the featurize stage of
    dvc.yaml and a tiny dataset."""
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"featurize": featurize_stage()}}))
    make_dataset(root)
    bin_dir = str(Path(sys.executable).parent)
    run(["git", "init", "-q"], root)
    run([f"{bin_dir}/dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root)
    return root


@pytest.mark.slow
def test_dvc_repro_then_exp_run_with_tiny_blip2(tmp_path: Path) -> None:
    from tiny_models import save_tiny_blip2

    root = project_copy(tmp_path / "project")
    dvc = [str(Path(sys.executable).parent / "dvc")]
    path = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run(dvc + ["repro", "featurize"], root, **path)
    assert json.loads((root / "features/meta.json").read_text())["encoder"] == "offline"
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"], params["weights"], params["modality"] = 0.5, "manual", "text"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert "up to date" in run(dvc + ["status", "featurize"], root, **path)
    params["featurize"]["batch_size"] = 4  # a control: the status check can see changes
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert re.search(r"modified:\s+featurize", run(dvc + ["status", "featurize"], root, **path))
    tiny = save_tiny_blip2(tmp_path / "tiny-blip2")
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "params"], root)
    run(
        dvc
        + [
            "exp",
            "run",
            "-S",
            "featurize.encoder=blip2",
            "-S",
            f"featurize.blip2.model={tiny}",
            "featurize",
        ],
        root,
        **path,
    )
    meta = json.loads((root / "features/meta.json").read_text())
    assert (meta["encoder"], meta["model"], meta["dims"]) == (
        "blip2",
        str(tiny),
        {"text": 24, "image": 32},
    )
    assert load_file(root / "features/train.safetensors")["image"].shape == (5, 32)


@pytest.mark.slow
def test_accelerate_two_cpu_processes_match_one(tmp_path: Path) -> None:
    outputs = {}
    for name, launch in (
        ("one", [sys.executable, "-m", "stages.featurize"]),
        (
            "two",
            [*LAUNCH_2CPU, "-m", "stages.featurize"],
        ),
    ):
        root = tmp_path / name
        make_dataset(root)
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["featurize"].update(encoder="offline", shard_size=2)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        shutil.copytree(
            REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__")
        )
        logs = run(launch, root)
        if name == "two":  # each process took its own shards: 3 distinct images in each
            assert "process 1/2: 2 of 3 image shards" in logs, logs
            assert "process 2/2: 1 of 3 image shards" in logs, logs
        outputs[name] = {s: (root / "features" / f"{s}.safetensors").read_bytes() for s in FILES}
    assert outputs["one"] == outputs["two"]
