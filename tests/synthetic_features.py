"""Feature files that follow the featurize contract (docs/DESIGN.md), for train/evaluate tests.

Each class has its own mean direction in both modalities, plus Gaussian noise: `separation`
sets how far apart the classes are (large = linearly separable, small = hard).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

CLASSES = ["urgent_help", "relief_info", "misinformation", "irrelevant"]
INPUT = {"strip_urls": True, "max_side": 448, "dummy_size": 224}  # prepare's dataset/input.json


def make_split(
    n_per_class: list[int] | int,
    dims: tuple[int, int] = (24, 40),
    separation: float = 3.0,
    seed: int = 0,
    first_id: int = 0,
    centers_seed: int = 123,
) -> dict[str, torch.Tensor]:
    counts = [n_per_class] * len(CLASSES) if isinstance(n_per_class, int) else n_per_class
    centers = np.random.default_rng(centers_seed)
    means = {k: centers.normal(size=(len(counts), d)) for k, d in zip(("text", "image"), dims)}
    rng = np.random.default_rng(seed)
    label = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(label)
    out = {
        k: (separation * means[k][label] + rng.normal(size=(len(label), d)) + 5.0).astype(
            np.float32
        )
        for k, d in zip(("text", "image"), dims)
    }
    return {
        "text": torch.from_numpy(out["text"]),
        "image": torch.from_numpy(out["image"]),
        "label": torch.from_numpy(label.astype(np.int64)),
        "id": torch.arange(first_id, first_id + len(label), dtype=torch.int64),
    }


def write_features(
    root: Path,
    counts: dict[str, list[int] | int] | None = None,
    dims: tuple[int, int] = (24, 40),
    separation: float = 3.0,
) -> Path:
    """Write features/{train,val,test}.safetensors, features/meta.json,
    dataset/test_balanced_100.csv (every other test id) and prepare's dataset/classes.json and
    dataset/input.json under `root`; return `root`."""
    counts = counts or {"train": 40, "val": 10, "test": 20}
    root = Path(root)
    (root / "features").mkdir(parents=True, exist_ok=True)
    rows, first_id = {}, 0
    for i, (split, n) in enumerate(counts.items()):
        data = make_split(n, dims, separation, seed=i + 1, first_id=first_id)
        save_file(data, str(root / "features" / f"{split}.safetensors"))
        rows[split] = len(data["label"])
        first_id += rows[split]
        if split == "test":
            (root / "dataset").mkdir(exist_ok=True)
            pd.DataFrame({"id": data["id"][::2].numpy()}).to_csv(
                root / "dataset" / "test_balanced_100.csv", index=False
            )
    meta = {
        "encoder": "synthetic",
        "model": "gaussian",
        "dims": {"text": dims[0], "image": dims[1]},
        "fingerprint": "test",
        "classes": CLASSES,
        "rows": rows,
    }
    (root / "features" / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    (root / "dataset").mkdir(exist_ok=True)
    (root / "dataset" / "classes.json").write_text(json.dumps(CLASSES), encoding="utf-8")
    (root / "dataset" / "input.json").write_text(json.dumps(INPUT), encoding="utf-8")
    return root
