"""Benchmark of the featurize stage's path in each runtime of the offline encoder, side by side.

    python bench/featurize.py [--posts 200] [--runtimes onnx torch torch+bf16] [--repeats 2]
                              [--batch-size 8] [--text-batch-size 32] [--workers 1]
                              [--threads N] [--out FILE]

On N real crisis4 posts (../shared/data/crisis4), one per distinct image (so the image cache
cannot help), normalised as prepare does (stages/images.py, not timed), cleaned as prepare
cleans their text (stages/text.py), for each runtime (`onnx`, `torch`, `torch+bf16` = torch
with bf16 autocast) in one process and interleaved rounds (median of --repeats):
- the stage's path (stages/embedding.py embed + the feature files, the encoder loaded), posts/s
  and CPU ms/post (this process + its DataLoader worker: steadier than posts/s when other
  jobs share the machine);
- the naive loop, one post at a time through the same encoder, posts/s;
- where the time goes: JPEG decode + preprocess in one thread (what the DataLoader worker
  does), the image network alone on decoded batches (img/s and GFLOP/s: FLOPs counted by
  torch's FlopCounterMode, 2 per multiply-add), the text model alone on the texts, length-
  sorted (texts/s);
- the worst cosine between each runtime's image/text vectors and the torch fp32 ones.
Also the CPU (model and the flags that decide bf16 speed), the peak RSS and the load average.
Not a test: the machine's load changes the figures; compare runtimes within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import stages  # noqa: E402,F401  (process-wide settings, before torch loads)
from stages import featurize  # noqa: E402
from stages.config import featurize_config  # noqa: E402
from stages.embedding import embed  # noqa: E402
from stages.encoders import ImageFiles, load_encoder, load_rgb  # noqa: E402
from stages.images import encode_jpeg, load_image  # noqa: E402
from stages.text import clean_text  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CLASSES = ["urgent_help", "relief_info", "misinformation", "irrelevant"]
RUNTIMES = {
    "onnx": {"runtime": "onnx", "bf16": False},
    "torch": {"runtime": "torch", "bf16": False},
    "torch+bf16": {"runtime": "torch", "bf16": True},
}

# The shipped featurize block: the settings a run does not vary (model ids of other backends).
SHIPPED = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8")
)["featurize"]


def config(**over):
    """The shipped `featurize:` params with `over` merged in (one level into `offline`)."""
    offline = SHIPPED["offline"] | over.pop("offline", {})
    return featurize_config(SHIPPED | over | {"encoder": "offline", "offline": offline})


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_name() -> str:
    """CPU model and the flags that decide how fast bf16 and AVX-512 kernels are."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    flags = set(
        next(
            (
                line.split(":", 1)[1].split()
                for line in info.splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    )
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs, flags: {' '.join(shown) or 'none'}"


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
    frame = pd.DataFrame(
        {
            "id": range(len(posts)),
            "text": [clean_text(t, True) for t in posts["text"]],
            "image_path": posts["image_path"].map(names).to_numpy(),
            "label": posts["label"].to_numpy(),
        }
    )
    frame.to_csv(root / "train_balanced.csv", index=False)
    return root / "train_balanced.csv"


def stage_path(csv: Path, encoder, cfg, work: Path) -> tuple[float, float]:
    """(seconds, CPU seconds of this process and its finished DataLoader workers)."""
    frames = {"train": featurize.read_split(csv, CLASSES)}
    start, cpu, workers = time.perf_counter(), time.process_time(), children_cpu()
    texts, images = embed(frames, encoder, cfg, work / "shards")
    featurize.write_features(
        frames, texts, images, encoder, cfg, work / "shards", work / "features", CLASSES
    )
    return (time.perf_counter() - start, time.process_time() - cpu + children_cpu() - workers)


def naive_loop(csv: Path, encoder) -> float:
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    start = time.perf_counter()
    for text, image in zip(frame["text"], frame["image_path"]):
        pixels = encoder.preprocess(load_rgb(csv.parent / image))
        encoder.encode_images(pixels[None])
        encoder.encode_text([text])
    return time.perf_counter() - start


def decode_rate(paths: list[Path], preprocess) -> float:
    """Images/s of decode + preprocess in one thread, as in a DataLoader worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        files = ImageFiles([str(p) for p in paths], preprocess)
        start = time.perf_counter()
        for i in range(len(files)):
            files[i]
        return len(files) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def image_gflop(image_size: int) -> float:
    """GFLOP of one image through the torch network (2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    encoder = load_encoder(
        config(offline={"image_size": image_size, "runtime": "torch", "bf16": False}),
        torch.device("cpu"),
    )
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        encoder.image_net.extract_features(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() / 1e9


def model_rates(
    encoder, pixels: torch.Tensor, texts: list[str], batch: int, text_batch: int
) -> tuple[float, float]:
    """(images/s of the image network alone, texts/s of the text model alone, token-sorted)."""
    start = time.perf_counter()
    for b in range(0, len(pixels), batch):
        encoder.encode_images(pixels[b : b + batch])
    images = len(pixels) / (time.perf_counter() - start)
    order = np.argsort(encoder.text_lengths(texts), kind="stable")
    ordered = [texts[k] for k in order]
    start = time.perf_counter()
    for b in range(0, len(ordered), text_batch):
        encoder.encode_text(ordered[b : b + text_batch])
    return images, len(ordered) / (time.perf_counter() - start)


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch and onnxruntime threads (the stage uses the CPU count)",
    )
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    source = SHARED / "crisis4" / "crisis4.csv"
    if not source.is_file():
        raise SystemExit(f"{source} is absent: this benchmark needs ../shared/data")
    crisis4 = pd.read_csv(source, dtype=str, keep_default_na=False)
    torch.set_num_threads(args.threads)
    base = {
        "batch_size": args.batch_size,
        "text_batch_size": args.text_batch_size,
        "num_workers": args.workers,
        "shard_size": 1024,
    }
    print(
        f"CPU: {cpu_name()}\nload average before: {os.getloadavg()}; threads {args.threads}; "
        f"settings {json.dumps(base)}",
        flush=True,
    )
    encoders, cfgs = {}, {}
    for name in args.runtimes:
        cfgs[name] = config(**base, offline={"image_size": 224, **RUNTIMES[name]})
        start = time.perf_counter()
        encoders[name] = load_encoder(cfgs[name], torch.device("cpu"))
        print(f"{name}: encoder loaded in {time.perf_counter() - start:.1f} s", flush=True)
    gflop = image_gflop(224)
    results: dict[str, dict[str, list[float]]] = {name: {} for name in args.runtimes}
    with tempfile.TemporaryDirectory() as tmp:
        distinct = crisis4.drop_duplicates("image_path")
        csv = build_dataset(distinct.head(args.posts), Path(tmp) / "distinct")
        n = len(pd.read_csv(csv))
        warmup = build_dataset(distinct.tail(16), Path(tmp) / "w")
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
        paths = [csv.parent / p for p in frame["image_path"]]
        texts = list(frame["text"])
        pixels = torch.stack([encoders[args.runtimes[0]].preprocess(load_rgb(p)) for p in paths])
        vectors = {}
        for name, encoder in encoders.items():  # kernel setup, and each runtime's vectors
            stage_path(warmup, encoder, cfgs[name], Path(tmp) / f"warmup-{name}")
            vectors[name] = (encoder.encode_images(pixels[:32]), encoder.encode_text(texts[:32]))
        for round_ in range(args.repeats):
            for name, encoder in encoders.items():
                work = Path(tmp) / f"{name}-{round_}"
                runs = results[name]
                seconds, cpu = stage_path(csv, encoder, cfgs[name], work)
                runs.setdefault("stage_posts_s", []).append(n / seconds)
                runs.setdefault("stage_cpu_ms_post", []).append(1000 * cpu / n)
                written = load_file(work / "features" / "train.safetensors")
                assert written["image"].shape == (n, 1280) and np.isfinite(written["image"]).all()
                runs.setdefault("naive_posts_s", []).append(n / naive_loop(csv, encoder))
                images, text_rate = model_rates(
                    encoder, pixels, texts, args.batch_size, args.text_batch_size
                )
                runs.setdefault("image_model_img_s", []).append(images)
                runs.setdefault("text_model_texts_s", []).append(text_rate)
                runs.setdefault("decode_img_s", []).append(decode_rate(paths, encoder.preprocess))
                print(
                    f"round {round_ + 1} {name}: stage {runs['stage_posts_s'][-1]:.1f} posts/s, "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {
        name: {k: statistics.median(v) for k, v in runs.items()} for name, runs in results.items()
    }
    reference = "torch" if "torch" in vectors else args.runtimes[0]
    print(
        f"\n{n} posts with distinct images (median of {args.repeats} interleaved rounds); "
        f"image network {gflop:.3f} GFLOP per {224}px image"
    )
    header = f"{'':34}" + "".join(f"{name:>14}" for name in summary)
    print(header)
    rows = [
        ("stage path, posts/s", "stage_posts_s", "{:.1f}"),
        ("stage path, CPU ms/post", "stage_cpu_ms_post", "{:.2f}"),
        ("naive loop, posts/s", "naive_posts_s", "{:.1f}"),
        ("image network alone, img/s", "image_model_img_s", "{:.1f}"),
        ("text model alone, texts/s", "text_model_texts_s", "{:.1f}"),
        ("decode+preprocess (1 thread), img/s", "decode_img_s", "{:.1f}"),
    ]
    for label, key, fmt in rows:
        print(f"{label:34}" + "".join(f"{fmt.format(s[key]):>14}" for s in summary.values()))
    print(
        f"{'image network, GFLOP/s':34}"
        + "".join(f"{s['image_model_img_s'] * gflop:>14.1f}" for s in summary.values())
    )
    print(
        f"{'stage / naive':34}"
        + "".join(f"{s['stage_posts_s'] / s['naive_posts_s']:>13.2f}x" for s in summary.values())
    )
    for name in summary:
        summary[name]["image_gflop_s"] = summary[name]["image_model_img_s"] * gflop
        summary[name]["min_cos_image_vs_torch"] = cosine_min(
            vectors[name][0], vectors[reference][0]
        )
        summary[name]["min_cos_text_vs_torch"] = cosine_min(vectors[name][1], vectors[reference][1])
    for kind in ("image", "text"):
        print(
            f"{f'min cosine to {reference}, {kind}':34}"
            + "".join(f"{s[f'min_cos_{kind}_vs_torch']:>14.6f}" for s in summary.values())
        )
    if "onnx" in summary:
        for name in summary:
            if name != "onnx":
                print(
                    f"onnx / {name}: stage path "
                    f"{summary['onnx']['stage_posts_s'] / summary[name]['stage_posts_s']:.2f}x "
                    f"(CPU per post: "
                    f"{summary[name]['stage_cpu_ms_post'] / summary['onnx']['stage_cpu_ms_post']:.2f}x"  # noqa: E501
                    f" less), image network "
                    f"{summary['onnx']['image_model_img_s'] / summary[name]['image_model_img_s']:.2f}x"  # noqa: E501
                )
    print(f"peak RSS of this process (all encoders loaded): {rss:.0f} MB")
    print(f"load average after: {os.getloadavg()}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "cpu": cpu_name(),
                    "posts": n,
                    "gflop_per_image": gflop,
                    "runs": results,
                    "median": summary,
                    "load_after": os.getloadavg(),
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
