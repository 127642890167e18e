"""Benchmark of the featurize stage's path against a naive one-post-at-a-time loop.

    python bench/featurize.py [--posts 400] [--batch-size 8] [--text-batch-size 32]
                              [--workers 1] [--no-bf16] [--threads N]

On N real crisis4 posts (../shared/data/crisis4), one per distinct image (so the image cache
cannot help), normalised as prepare does (stages/images.py, not timed), with the `offline`
encoder. Prints posts/s of the stage's path (embed + assemble the feature file, the model
already loaded), posts/s of the naive loop over the same posts, their ratio, then the stage's
path on N random posts (images reused, as in the real data), the peak RSS and the load
average. The naive loop runs twice: with the stage's encoder and with a plain fp32 one.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stages import featurize  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
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


def peak_rss_mb() -> tuple[float, float]:
    """Peak RSS of this process and of its largest child (a DataLoader worker, whose count
    includes the pages it shares with this process after fork)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return own / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (the stage uses the CPU count)")
    args = parser.parse_args()
    source = SHARED / "crisis4" / "crisis4.csv"
    if not source.is_file():
        raise SystemExit(f"{source} is absent: this benchmark needs ../shared/data")
    crisis4 = pd.read_csv(source, dtype=str, keep_default_na=False)
    classes = ["urgent_help", "relief_info", "misinformation", "irrelevant"]
    torch.set_num_threads(args.threads)
    cfg = {"encoder": "offline", "batch_size": args.batch_size,
           "text_batch_size": args.text_batch_size, "num_workers": args.workers,
           "shard_size": 1024, "offline": {"image_size": 224, "bf16": not args.no_bf16}}
    start = time.perf_counter()
    encoder = load_encoder(cfg, torch.device("cpu"))
    print(f"load average before: {os.getloadavg()}; torch threads {torch.get_num_threads()}; "
          f"encoder loaded in {time.perf_counter() - start:.1f} s; settings {json.dumps(cfg)}")
    with tempfile.TemporaryDirectory() as tmp:
        distinct = crisis4.drop_duplicates("image_path").head(args.posts)
        csv = build_dataset(distinct, Path(tmp) / "distinct")
        n = len(distinct)
        warmup = build_dataset(crisis4.drop_duplicates("image_path").tail(16), Path(tmp) / "w")
        stage_path(warmup, encoder, cfg, classes, Path(tmp) / "warmup")  # kernel setup
        stage = n / stage_path(csv, encoder, cfg, classes, Path(tmp) / "run")
        rss, worker_rss = peak_rss_mb()
        written = load_file(Path(tmp) / "run" / "features" / "train.safetensors")
        assert written["image"].shape == (n, 1280) and np.isfinite(written["image"]).all()
        naive = n / naive_loop(csv, encoder)
        print(f"{n} posts with distinct images: stage path {stage:.1f} posts/s; naive loop "
              f"(same encoder, one post at a time) {naive:.1f} posts/s; "
              f"ratio {stage / naive:.2f}x")
        plain = load_encoder(cfg | {"offline": {"image_size": 224, "bf16": False}},
                             torch.device("cpu"))
        plain_naive = n / naive_loop(csv, plain)
        print(f"naive loop with a plain fp32 encoder: {plain_naive:.1f} posts/s; "
              f"ratio {stage / plain_naive:.2f}x")
        reused = crisis4.sample(n=min(len(crisis4), args.posts), random_state=0)
        csv = build_dataset(reused, Path(tmp) / "reused")
        reused_rate = len(reused) / stage_path(csv, encoder, cfg, classes, Path(tmp) / "r")
        print(f"{len(reused)} random posts ({reused['image_path'].nunique()} distinct images, "
              f"{reused['text'].nunique()} distinct texts): stage path {reused_rate:.1f} posts/s")
    print(f"peak RSS of the stage path (model included): {rss:.0f} MB; largest DataLoader "
          f"worker {worker_rss:.0f} MB (pages shared with the parent counted)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
