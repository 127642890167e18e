"""Cost of explanations: seconds a post, text and image apart, one post at a time (what
`predict --explain` does: encode, attribute, split the share) and for the whole stage.

    python bench/explain.py --work /tmp/explain-clone [--posts 32] [--steps 16]

--work is a directory where `dvc repro` ran (models/, features/, dataset/). The figures
are wall-clock on this machine's CPU (named in the output); targets from issue 13: the explain
stage on the shipped sample well under a minute, <= 0.5 s a post for a single explained post.
Not a test: run it on a quiet machine and quote the CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import numpy as np  # noqa: E402

import stages  # noqa: E402,F401  (process-wide settings, before torch loads)
from stages import csvsafe  # noqa: E402
from stages.attribution import Explainer  # noqa: E402
from stages.encoders import load_encoder, load_rgb  # noqa: E402
from stages.model import load_model  # noqa: E402
from stages.params import load_params  # noqa: E402


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--posts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="default: params.yaml's")
    args = parser.parse_args()
    os.chdir(args.work)
    params = load_params()
    steps = args.steps or int(params["explain"]["steps"])
    module, meta = load_model(Path("models"))
    start = time.perf_counter()
    encoder = load_encoder(params["featurize"])
    load_s = time.perf_counter() - start
    posts = csvsafe.read_csv(Path("dataset/test_balanced.csv"), int_columns=()).head(args.posts)
    explainer = Explainer(module, encoder, params["explain"]["method"], steps)
    explainer.explain(
        [posts["text"].iloc[0]],
        [encoder.preprocess(load_rgb(Path("dataset") / posts["image_path"].iloc[0]))],
        [True],
    )  # warm-up: first calls pay for lazy initialisation
    explainer.seconds = {"text": 0.0, "image": 0.0}
    per_post = []
    for text, image in zip(posts["text"], posts["image_path"]):
        explainer._text_cache.clear()  # a new post: nothing encoded before
        t0 = time.perf_counter()
        pixels = encoder.preprocess(load_rgb(Path("dataset") / image))
        explainer.explain([text], [pixels], [True])
        per_post.append(time.perf_counter() - t0)
    n = len(per_post)
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads "
        f"{__import__('torch').get_num_threads()}"
    )
    print(
        f"methods: {explainer.text_method} / {explainer.image_method}, steps {steps}; "
        f"encoder load {load_s:.1f} s (once)"
    )
    print(
        f"one post at a time ({n} posts, image decode + encode + attributions + share): "
        f"median {statistics.median(per_post):.3f} s, mean {np.mean(per_post):.3f} s, "
        f"max {max(per_post):.3f} s"
    )
    print(
        f"  of which text attribution {explainer.seconds['text'] / n:.3f} s, image "
        f"attribution {explainer.seconds['image'] / n:.4f} s a post"
    )


if __name__ == "__main__":
    main()
