"""Training cost: seconds per epoch of the train stage's loop, and how it grows with rows.

    python bench/train.py [--rows 2500 5000 10000 20000] [--epochs 5] [--repeats 3]

Features of the offline encoder's shape (text 384 + image 1280 columns, 4 classes, random
Gaussian values: the cost of an epoch does not depend on what the numbers mean), trained by
`stages.train.train_model` with the params.yaml `train:` settings, except a fixed number of
epochs (patience = epochs, so no early stop). Validation: 1,000 rows, scored every epoch as in
the stage. An epoch's time is the median gap between consecutive epoch ends within a run
(setup excluded); prints median / min / max of it over the repeats, for each row count.
Not a test: the machine's load changes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stages.train import TRAIN_KEYS, class_weights, train_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DIMS = {"text": 384, "image": 1280}
N_CLASSES = 4


def features(rows: int, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return {
        k: torch.from_numpy(rng.normal(size=(rows, d)).astype(np.float32)) for k, d in DIMS.items()
    } | {"label": torch.from_numpy(rng.integers(0, N_CLASSES, rows)), "id": torch.arange(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2500, 5000, 10000, 20000])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modality", default="both")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    cfg = {k: params["train"][k] for k in TRAIN_KEYS}
    cfg |= {"epochs": args.epochs, "patience": args.epochs}
    print(
        f"torch threads {torch.get_num_threads()}, train settings {json.dumps(cfg)}, "
        f"load {os.getloadavg()}"
    )
    val = features(1000, seed=1)
    results = []
    for rows in args.rows:
        train = features(rows, seed=0)
        weights = class_weights("auto", train["label"].numpy(), ["a", "b", "c", "d"])
        per_epoch = []
        for _ in range(args.repeats):
            # Time between the ends of consecutive epochs (an epoch + its validation pass):
            # the one-off setup (accelerate, first allocation) is left out.
            ends: list[float] = []
            train_model(
                train,
                val,
                N_CLASSES,
                args.modality,
                cfg,
                weights,
                lambda _row, ends=ends: ends.append(time.perf_counter()),
            )
            per_epoch.append(statistics.median(np.diff(ends)))
        row = {
            "rows": rows,
            "median_s": statistics.median(per_epoch),
            "min_s": min(per_epoch),
            "max_s": max(per_epoch),
            "repeats": args.repeats,
            "load": round(os.getloadavg()[0], 2),
        }
        results.append(row)
        print(
            f"{rows:>6} rows x {sum(DIMS.values())} features: {row['median_s']:.3f} s/epoch "
            f"(min {row['min_s']:.3f}, max {row['max_s']:.3f}, {args.repeats} runs of "
            f"{args.epochs} epochs), {rows / row['median_s']:.0f} rows/s, load {row['load']}",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps({"settings": cfg, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
