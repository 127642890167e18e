"""featurize: frozen-encoder embeddings of each post's text and image, for every split.

Reads `featurize.*`, dataset/classes.json and the split CSVs; writes
features/{train,val,test}.safetensors and features/meta.json (docs/DESIGN.md). Each distinct
text and image is embedded once, in resumable shards (stages/feature_store.py). Under
`torchrun --nproc_per_node N -m stages.featurize` (or `accelerate launch --multi_gpu
--num_processes N`, which is torchrun, on CPU too) each process embeds every N-th shard and the
output is identical to one process's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState

from stages import config, csvsafe
from stages.config import FeaturizeConfig
from stages.embedding import embed
from stages.encoders import Encoder, load_encoder
from stages.feature_store import Items, ShardReader, write_rows
from stages.files import write_json

log = logging.getLogger("featurize")
DATASET, FEATURES, WORK_DIR = Path("dataset"), Path("features"), Path("tmp/featurize")
SPLITS = {"train": "train_balanced.csv", "val": "val.csv", "test": "test_balanced.csv"}
COLUMNS = ["id", "text", "image_path", "label"]


def read_split(path: Path, classes: list[str]) -> pd.DataFrame:
    """Rows with `label` as a class index and `image_path` resolved; errors name file and row."""
    frame = csvsafe.read_csv(path, int_columns=())  # undoes prepare's formula escapes ('@user)
    if missing := [c for c in COLUMNS if c not in frame.columns]:
        raise ValueError(f"{path}: missing columns {missing} (expected {COLUMNS})")
    labels = frame["label"].map({name: k for k, name in enumerate(classes)})
    for bad, problem in (
        (~frame["id"].str.fullmatch(r"-?\d+"), "id is not an integer"),
        (labels.isna(), f"label is not one of {classes}"),
    ):
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise ValueError(
                f"{path} data row {row + 1} (id {frame['id'][row]!r}, "
                f"label {frame['label'][row]!r}): {problem}"
            )
    images = [str(path.parent / p) for p in frame["image_path"]]
    for row, image in enumerate(images):
        if not Path(image).is_file():
            raise FileNotFoundError(f"{path} data row {row + 1}: image {image} does not exist")
    return pd.DataFrame(
        {
            "id": frame["id"].astype(np.int64),
            "text": frame["text"],
            "image": images,
            "label": labels.astype(np.int64),
        }
    )


def write_features(
    frames: dict[str, pd.DataFrame],
    texts: Items,
    images: Items,
    encoder: Encoder,
    cfg: FeaturizeConfig,
    work_dir: Path,
    out_dir: Path,
    classes: list[str],
) -> dict[str, Any]:
    """Each split's file in CSV row order, assembled from the shards; then meta.json."""
    size, fingerprint = cfg.shard_size, encoder.fingerprint()
    text_rows = ShardReader(work_dir, "text", size, encoder.text_dim)
    image_rows = ShardReader(work_dir, "image", size, encoder.image_dim)
    for split, frame in frames.items():
        write_rows(
            out_dir / f"{split}.safetensors",
            {"text": (text_rows, texts.rows[split]), "image": (image_rows, images.rows[split])},
            {"label": frame["label"].to_numpy(), "id": frame["id"].to_numpy()},
            size,
            {"encoder": encoder.name, "fingerprint": fingerprint},
        )
    meta = {
        "encoder": encoder.name,
        "model": encoder.model,
        "dims": {"text": encoder.text_dim, "image": encoder.image_dim},
        "fingerprint": fingerprint,
        "classes": classes,
        "rows": {split: len(frame) for split, frame in frames.items()},
    }
    write_json(out_dir / "meta.json", meta)
    return meta


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config.load(config.FeaturizeStage).featurize  # fails before any model loads
    # cpu=True lets torchrun-style launchers form a gloo process group on CPU-only machines.
    state = PartialState(cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cpus or 1) // state.num_processes))
    classes = json.loads((DATASET / "classes.json").read_text(encoding="utf-8"))
    frames = {split: read_split(DATASET / name, classes) for split, name in SPLITS.items()}
    start = time.perf_counter()
    encoder = load_encoder(cfg, state.device)
    texts, images = embed(frames, encoder, cfg, WORK_DIR, state.process_index, state.num_processes)
    state.wait_for_everyone()
    if state.is_main_process:
        meta = write_features(frames, texts, images, encoder, cfg, WORK_DIR, FEATURES, classes)
        shutil.rmtree(WORK_DIR, ignore_errors=True)
        print(
            f"featurize: {encoder.name} ({encoder.model}), dims {meta['dims']}, rows "
            f"{meta['rows']}, {len(images.values)} distinct images and {len(texts.values)} "
            f"distinct texts, {time.perf_counter() - start:.1f} s"
        )


if __name__ == "__main__":
    main()
