"""Marginal `dvc repro featurize` throughput of code revisions, measured in one run.

    python bench/featurize_repro.py [--revs f35ff7e HEAD] [--posts 416 1664] [--out FILE]

Real crisis4 posts (../shared/data/crisis4) with distinct images: each of crisis4's 416
distinct images in 4 versions (as is, mirrored, flipped, turned 180 degrees: other pixels,
other content hashes, the same decoding cost), each version with the text of another post.
The first 416 posts are the originals; 1,664 is all of them. For each revision, a `git clone`
of this repository at that revision gets the posts as its only source under dataset/raw
(`prepare.balance: none`), its own `featurize:` params (the shipped ones of that revision),
and then for each size: `dvc repro prepare` (not timed), then `dvc repro featurize` timed, its
process tree's peak RSS sampled (bench/featurize_memory.py). Sizes and revisions are
interleaved, so that both revisions see the machine in about the same state. Marginal
throughput = (rows at the large size - rows at the small) / (seconds at large - small): the
start-up (imports, model load, a first ONNX export) cancels out. Prints the CPU and the load.
Not a test: minutes of CPU on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from PIL import ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featurize import cpu_name  # noqa: E402  (bench/featurize.py)
from featurize_memory import watch  # noqa: E402

from stages.images import load_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
VARIANTS = (lambda im: im, ImageOps.mirror, ImageOps.flip, lambda im: im.rotate(180))


def build_source(root: Path, count: int) -> pd.DataFrame:
    """`count` posts: 4 versions of each distinct crisis4 image, each with another post's text."""
    crisis4 = pd.read_csv(SHARED / "crisis4" / "crisis4.csv", dtype=str, keep_default_na=False)
    originals = crisis4.drop_duplicates("image_path").reset_index(drop=True)
    spare = crisis4.drop(crisis4.drop_duplicates("image_path").index).drop_duplicates("text")
    (root / "images").mkdir(parents=True)
    rows = []
    for v, variant in enumerate(VARIANTS):
        texts = originals if v == 0 else spare.iloc[(v - 1) * len(originals) :]
        for k, post in originals.iterrows():
            if len(rows) == count:
                return pd.DataFrame(rows)
            loaded = load_image(post["image_path"], SHARED, max_side=448)
            if loaded.image is None:
                continue
            name = f"images/{k:04d}-{v}.jpg"
            variant(loaded.image).save(root / name, quality=95)
            rows.append(
                {
                    "post_id": f"{v}{k:05d}",
                    "text": texts["text"].iloc[k],
                    "image_path": name,
                    "label": post["label"],
                }
            )
    return pd.DataFrame(rows)


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"{' '.join(command)} failed in {cwd} (exit {done.returncode})")
    return done.stdout + done.stderr


def checkout(rev: str, target: Path, env: dict[str, str]) -> None:
    run(["git", "clone", "-q", str(REPO), str(target)], REPO, env)
    run(["git", "checkout", "-q", rev], target, env)
    params = yaml.safe_load((target / "params.yaml").read_text(encoding="utf-8"))
    params["data"] = {
        "sources": [
            {
                "name": "bench",
                "path": "dataset/raw/bench/posts.csv",
                "format": "csv",
                "image_root": "dataset/raw/bench",
            }
        ]
    }
    params["prepare"]["balance"] = "none"
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revs", nargs="+", default=["f35ff7e", "HEAD"])
    parser.add_argument("--posts", type=int, nargs=2, default=[416, 1664])
    parser.add_argument(
        "--env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="for every stage run, e.g. ONEDNN_MAX_CPU_ISA=AVX512_CORE: "
        "PyTorch's oneDNN without AVX512-BF16/AMX, as on CPUs without them",
    )
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    if not (SHARED / "crisis4" / "crisis4.csv").is_file():
        raise SystemExit(f"{SHARED} is absent: this benchmark needs ../shared/data")
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    env |= dict(item.split("=", 1) for item in args.env)
    revs = {rev: run(["git", "rev-parse", "--short", rev], REPO, env).strip() for rev in args.revs}
    print(
        f"CPU: {cpu_name()}\nrevisions {revs}; environment {args.env}; load {os.getloadavg()}",
        flush=True,
    )
    figures: dict[str, dict] = {rev: {} for rev in args.revs}
    with tempfile.TemporaryDirectory(prefix="crisis-mm-repro-") as tmp:
        source = build_source(Path(tmp) / "source", max(args.posts))
        for rev in args.revs:
            clone = Path(tmp) / revs[rev]
            checkout(revs[rev], clone, env)
            shutil.copytree(Path(tmp) / "source" / "images", clone / "dataset/raw/bench/images")
            # Load the encoder once (a first ONNX export, file caches) before anything is timed.
            warm = (
                "import yaml; from stages.encoders import load_encoder; load_encoder("
                "yaml.safe_load(open('params.yaml'))['featurize'])"
            )
            run([sys.executable, "-c", warm], clone, env)
        for n in sorted(args.posts):
            for rev in args.revs:
                clone = Path(tmp) / revs[rev]
                source.head(n).to_csv(clone / "dataset/raw/bench/posts.csv", index=False)
                run([sys.executable, "-m", "dvc", "repro", "prepare"], clone, env)
                load = os.getloadavg()[0]
                result = watch([sys.executable, "-m", "dvc", "repro", "featurize"], clone, env)
                meta = json.loads((clone / "features" / "meta.json").read_text())
                result |= {
                    "rows": sum(meta["rows"].values()),
                    "load_before": round(load, 2),
                    "load_after": round(os.getloadavg()[0], 2),
                }
                figures[rev][n] = result
                print(
                    f"{rev} ({revs[rev]}), {n} posts: {result['rows']} rows featurized in "
                    f"{result['seconds']:.1f} s; peak RSS of one process "
                    f"{result['peak_max_rss_mb']:.0f}"
                    f" MB, peak PSS of the tree {result['peak_tree_pss_mb']:.0f} MB; load "
                    f"{result['load_before']} -> {result['load_after']}",
                    flush=True,
                )
    small, large = sorted(args.posts)
    marginal, cpu = {}, {}
    for rev, runs in figures.items():
        rows = runs[large]["rows"] - runs[small]["rows"]
        marginal[rev] = rows / (runs[large]["seconds"] - runs[small]["seconds"])
        cpu[rev] = 1000 * (runs[large]["cpu_seconds"] - runs[small]["cpu_seconds"]) / rows
        print(
            f"{rev}: marginal {marginal[rev]:.1f} posts/s, {cpu[rev]:.1f} CPU ms/post ({rows} rows)"
        )
    first, *others = args.revs
    for rev in others:
        print(
            f"{rev} / {first}: {marginal[rev] / marginal[first]:.2f}x posts/s, "
            f"{cpu[first] / cpu[rev]:.2f}x less CPU per post"
        )
    print(f"load average after: {os.getloadavg()}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "cpu": cpu_name(),
                    "revisions": revs,
                    "runs": figures,
                    "marginal_posts_s": marginal,
                    "marginal_cpu_ms_post": cpu,
                    "env": args.env,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
