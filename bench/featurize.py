"""Benchmark of the featurize stage's path against a naive one-post-at-a-time loop.

    python bench/featurize.py [--posts 400] [--batch-size 8] [--text-batch-size 32]
                              [--workers 1] [--no-bf16]

On N real crisis4 posts (../shared/data/crisis4), one per distinct image (so the image cache
cannot help), normalised as prepare does (stages/images.py, not timed), with the `offline`
encoder. Prints posts/s of the stage's path (embed + assemble the feature file, the model
already loaded), posts/s of the naive loop over the same posts, their ratio, then the stage's
path on N posts in file order (images reused, as in the real data), the peak RSS and the load
average.
Not a test: the machine's load changes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import load_file

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would drown the figures
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stages import featurize  # noqa: E402
from stages.encoders import load_encoder, load_rgb  # noqa: E402
from stages.images import encode_jpeg, load_image  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def build_dataset(posts: pd.DataFrame, root: Path) -> Path:
    """posts as dataset/train_balanced.csv plus normalised images, as prepare lays them out."""
    (root / "images_train").mkdir(parents=True)
    names = {}
    for source in posts["image_path"].unique():
        loaded = load_image(source, SHARED, max_side=448)
        if loaded.image is None:
            raise SystemExit(f"{source}: {loaded.detail}")
        digest, data = encode_jpeg(loaded.image)
        (root / "images_train" / f"{digest}.jpg").write_bytes(data)
        names[source] = f"images_train/{digest}.jpg"
    frame = pd.DataFrame({"id": range(len(posts)), "text": posts["text"].to_numpy(),
                          "image_path": posts["image_path"].map(names).to_numpy(),
                          "label": posts["label"].to_numpy()})
    frame.to_csv(root / "train_balanced.csv", index=False)
    return root / "train_balanced.csv"


def stage_path(csv: Path, encoder, cfg: dict, classes: list[str], work: Path) -> float:
    frames = {"train": featurize.read_split(csv, classes)}
    start = time.perf_counter()
    texts, images = featurize.embed(frames, encoder, cfg, work / "shards")
    featurize.write_features(frames, texts, images, encoder, cfg, work / "shards",
                             work / "features", classes)
    return time.perf_counter() - start


def naive_loop(csv: Path, encoder) -> float:
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    start = time.perf_counter()
    for text, image in zip(frame["text"], frame["image_path"]):
        pixels = encoder.preprocess(load_rgb(csv.parent / image))
        encoder.encode_images(pixels[None])
        encoder.encode_text([text])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-bf16", action="store_true")
    args = parser.parse_args()
    source = SHARED / "crisis4" / "crisis4.csv"
    if not source.is_file():
        raise SystemExit(f"{source} is absent: this benchmark needs ../shared/data")
    crisis4 = pd.read_csv(source, dtype=str, keep_default_na=False)
    classes = ["urgent_help", "relief_info", "misinformation", "irrelevant"]
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cfg = {"encoder": "offline", "batch_size": args.batch_size,
           "text_batch_size": args.text_batch_size, "num_workers": args.workers,
           "shard_size": 1024, "offline": {"image_size": 224, "bf16": not args.no_bf16}}
    start = time.perf_counter()
    encoder = load_encoder(cfg, torch.device("cpu"))
    load_s = time.perf_counter() - start
    print(f"load average before: {os.getloadavg()}; torch threads {torch.get_num_threads()}; "
          f"encoder loaded in {load_s:.1f} s; settings {json.dumps(cfg)}")
    with tempfile.TemporaryDirectory() as tmp:
        distinct = crisis4.drop_duplicates("image_path").head(args.posts)
        csv = build_dataset(distinct, Path(tmp) / "distinct")
        n = len(distinct)
        stage_path(csv, encoder, cfg, classes, Path(tmp) / "warmup")  # first-call kernel setup
        stage_s = stage_path(csv, encoder, cfg, classes, Path(tmp) / "run")
        naive_s = naive_loop(csv, encoder)
        ratio = (n / stage_s) / (n / naive_s)
        print(f"{n} posts with distinct images: stage path {n / stage_s:.1f} posts/s, "
              f"naive loop {n / naive_s:.1f} posts/s, ratio {ratio:.2f}x")
        reused = crisis4.sample(n=min(len(crisis4), args.posts), random_state=0)
        csv = build_dataset(reused, Path(tmp) / "reused")
        reused_s = stage_path(csv, encoder, cfg, classes, Path(tmp) / "reused_run")
        print(f"{len(reused)} random posts ({reused['image_path'].nunique()} distinct images, "
              f"{reused['text'].nunique()} distinct texts): stage path "
              f"{len(reused) / reused_s:.1f} posts/s")
        written = load_file(Path(tmp) / "run" / "features" / "train.safetensors")
        assert written["image"].shape == (n, 1280) and np.isfinite(written["image"]).all()
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"peak RSS: {self_kb / 1024:.0f} MB "
          f"(largest DataLoader worker, pages shared with it counted: {child_kb / 1024:.0f} MB)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
