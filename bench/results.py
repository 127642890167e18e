"""Quality on the real data sets: the pipeline's own stages, driven by params only.

    python bench/results.py [--datasets crisis4 crisismmd5 crisismmd4 mediaeval]
                            [--work /tmp/crisis-mm-results] [--out reports/results.json]
                            [--combos quick|full] [-S train.epochs=80 ...]

For each data set: a working directory holding a params.yaml (the repository's, with the data
set's `classes`, `data.sources`, `prepare.balance` and the given -S overrides) and a link to
`stages/`; `prepare` and `featurize` run once, then `train` + `evaluate` for each
modality x weights combination, each a plain `python -m stages.<name>` in that directory.
Beside the MLP, a logistic-regression probe (scikit-learn, standardised features, C picked on
the validation split) on the same features shows what a linear model gets. Prints one line
per run and writes every figure (with the load average) to --out. Not a test: minutes of CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CRISISMMD5 = [
    "affected_individuals",
    "infrastructure_and_utility_damage",
    "not_humanitarian",
    "other_relevant_information",
    "rescue_volunteering_or_donation_effort",
]


def _crisismmd(label_column: str) -> list[dict[str, Any]]:
    root = SHARED / "crisismmd"
    # The images are not distributed: a root that holds nothing sends every row to the dummy.
    return [
        {
            "name": f"crisismmd_{split}",
            "format": "crisismmd",
            "split": split,
            "path": str(root / f"task_humanitarian_text_img_agreed_lab_{split}.tsv"),
            "image_root": str(root / "absent_images"),
            "label_column": label_column,
        }
        for split in ("train", "dev", "test")
    ]


DATASETS: dict[str, dict[str, Any]] = {
    "crisis4": {
        "params": {
            "data": {
                "sources": [
                    {
                        "name": "crisis4",
                        "format": "csv",
                        "path": str(SHARED / "crisis4" / "crisis4.csv"),
                        "image_root": str(SHARED),
                    }
                ]
            }
        },
        "full": [(m, w) for m in ("text", "image", "both") for w in ("auto", "manual", "none")],
        "quick": [
            ("text", "auto"),
            ("image", "auto"),
            ("both", "auto"),
            ("both", "manual"),
            ("both", "none"),
        ],
    },
    "crisismmd5": {
        "params": {
            "classes": CRISISMMD5,
            "data": {"sources": _crisismmd("label_text")},
            "manual_weights": {c: 4.0 if c == "affected_individuals" else 1.0 for c in CRISISMMD5},
        },
        "full": [("text", "auto"), ("text", "none"), ("text", "manual"), ("both", "auto")],
        "quick": [("text", "auto"), ("text", "none"), ("both", "auto")],
    },
    # CrisisMMD has no misinformation rows: weights=auto (inverse frequency) is undefined and
    # train says so; manual and none still train the 4-output model.
    "crisismmd4": {
        "params": {"data": {"sources": _crisismmd("label")}},
        "full": [("text", "none"), ("text", "manual"), ("both", "none")],
        "quick": [("text", "none"), ("text", "manual"), ("both", "none")],
    },
    "mediaeval": {
        "params": {
            "classes": ["fake", "real"],
            "manual_weights": {"fake": 1.0, "real": 2.0},
            "data": {
                "sources": [
                    {
                        "name": "mediaeval2016_dev",
                        "format": "mediaeval",
                        "split": "train",
                        "path": str(SHARED / "mediaeval/2016/devset/posts.txt"),
                        "image_root": str(SHARED / "mediaeval/2016/devset/images"),
                        "label_map": {"fake": "fake", "real": "real"},
                    },
                    {
                        "name": "mediaeval2016_test",
                        "format": "mediaeval",
                        "split": "test",
                        "path": str(SHARED / "mediaeval/2016/testset/posts_groundtruth.txt"),
                        "image_root": str(SHARED / "mediaeval/2016/testset/images"),
                        "label_map": {"fake": "fake", "real": "real"},
                    },
                ]
            },
        },
        "full": [(m, w) for m in ("text", "image", "both") for w in ("auto", "none")],
        "quick": [("text", "auto"), ("image", "auto"), ("both", "auto")],
    },
}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "manual_weights":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(params: dict[str, Any], assignment: str) -> None:
    """`-S train.hidden=[1024,256]` as dvc exp run reads it (value parsed as YAML)."""
    key, _, raw = assignment.partition("=")
    node = params
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = yaml.safe_load(raw)


def run_stage(work: Path, stage: str) -> float:
    start = time.perf_counter()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(work)}
    if stage in ("train", "evaluate"):
        # A small MLP gains nothing from a second intra-op thread, and on a shared, loaded
        # machine torch's spinning threads made an epoch several times slower.
        env |= {"OMP_NUM_THREADS": os.environ.get("TRAIN_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"], cwd=work, env=env, capture_output=True, text=True
    )
    if done.returncode:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-5000:])
        raise SystemExit(f"{work.name}: stage {stage} failed (exit {done.returncode})")
    return time.perf_counter() - start


def probe(work: Path, modality: str) -> dict[str, float]:
    """Logistic regression on the same standardised features; C chosen on validation macro-F1."""
    from safetensors.numpy import load_file
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    def xy(split: str) -> tuple[np.ndarray, np.ndarray]:
        data = load_file(work / "features" / f"{split}.safetensors")
        parts = {
            "text": [data["text"]],
            "image": [data["image"]],
            "both": [data["text"], data["image"]],
        }[modality]
        return np.concatenate(parts, axis=1), data["label"]

    (xt, yt), (xv, yv), (xs, ys) = xy("train"), xy("val"), xy("test")
    scaler = StandardScaler().fit(xt)
    xt, xv, xs = scaler.transform(xt), scaler.transform(xv), scaler.transform(xs)
    best = None
    for c in (0.001, 0.003, 0.01, 0.03, 0.1):
        model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(xt, yt)
        f1 = f1_score(yv, model.predict(xv), average="macro")
        if best is None or f1 > best[0]:
            best = (f1, c, model)
    f1, c, model = best
    pred = model.predict(xs)
    return {
        "C": c,
        "val_macro_f1": float(f1),
        "accuracy": float(accuracy_score(ys, pred)),
        "macro_f1": float(f1_score(ys, pred, average="macro")),
    }


def run_dataset(
    name: str,
    work_root: Path,
    combos: str,
    overrides: list[str],
    reuse: bool,
    seed_shards: Path | None = None,
    save: Callable[[dict[str, Any]], None] = lambda _: None,
) -> dict[str, Any]:
    spec = DATASETS[name]
    base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params = merge(base, spec["params"])
    # Full sets are not downsampled: balancing to the rarest class would leave ~80 CrisisMMD
    # training rows; the loss's class weights handle the imbalance instead.
    params["prepare"]["balance"] = "none"
    for assignment in overrides:
        set_dotted(params, assignment)
    work = work_root / name
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "stages").exists():
        (work / "stages").symlink_to(REPO / "stages")
    out: dict[str, Any] = {"overrides": overrides, "classes": params["classes"], "runs": []}

    def write_params(modality: str, weights: str) -> None:
        text = yaml.safe_dump(params | {"modality": modality, "weights": weights}, sort_keys=False)
        (work / "params.yaml").write_text(text, encoding="utf-8")

    write_params("both", "auto")
    # --reuse: train-only overrides need no new features (prepare/featurize params unchanged).
    fresh = not (reuse and (work / "features" / "meta.json").is_file())
    out["prepare_s"] = run_stage(work, "prepare") if fresh else None
    out["prepare"] = json.loads((work / "reports" / "prepare.json").read_text())
    if fresh and seed_shards and seed_shards.is_dir():
        # Shards of another run over the same posts: featurize checks each one's tag (encoder
        # fingerprint + content hashes) and embeds again any that do not match.
        (work / "tmp" / "featurize").mkdir(parents=True, exist_ok=True)
        for shard in seed_shards.glob("*.safetensors"):
            shutil.copy2(shard, work / "tmp" / "featurize" / shard.name)
    out["featurize_s"] = run_stage(work, "featurize") if fresh else None
    out["rows"] = json.loads((work / "features" / "meta.json").read_text())["rows"]
    print(
        f"{name}: prepare {out['prepare_s']}s, featurize {out['featurize_s']}s, "
        f"rows {out['rows']}, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    for modality, weights in spec[combos]:
        write_params(modality, weights)
        seconds = run_stage(work, "train") + run_stage(work, "evaluate")
        both = json.loads((work / "reports" / "metrics.json").read_text())
        metrics, small = both["test"], both["test_100"]
        model = json.loads((work / "models" / "model.json").read_text())
        run = {
            "modality": modality,
            "weights": weights,
            "seconds": round(seconds, 1),
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "roc_auc": metrics["roc_auc_ovr_macro"],
            "test_rows": metrics["rows"],
            "best_epoch": model["best_epoch"],
            "val_macro_f1": model["best_val_macro_f1"],
            "test_100": {
                "rows": small["rows"],
                "accuracy": small["accuracy"],
                "macro_f1": small["macro_f1"],
            },
            "per_class_f1": {c: v["f1"] for c, v in metrics["per_class"].items()},
            "load": round(os.getloadavg()[0], 2),
        }
        out["runs"].append(run)
        save(out)
        print(
            f"{name} modality={modality:5} weights={weights:6} acc {run['accuracy']:.4f} "
            f"macro-F1 {run['macro_f1']:.4f} (val {run['val_macro_f1']:.4f}, best epoch "
            f"{run['best_epoch']}) {seconds:.0f}s load {run['load']}",
            flush=True,
        )
    out["probe"] = {}
    for modality in sorted({m for m, _ in spec[combos]}):
        out["probe"][modality] = probe(work, modality)
        print(
            f"{name} logistic-regression probe modality={modality}: {out['probe'][modality]}",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/crisis-mm-results"))
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "results.json")
    parser.add_argument("--combos", choices=("quick", "full"), default="full")
    parser.add_argument(
        "-S",
        dest="overrides",
        action="append",
        default=[],
        help="params override as for dvc exp run, e.g. train.epochs=80",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the work dir's features (for train-only overrides)",
    )
    parser.add_argument(
        "--seed-shards",
        type=Path,
        help="featurize shards to start from (another run's tmp/featurize)",
    )
    parser.add_argument("--tag", default="", help="results key suffix, e.g. for an override set")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: these results need ../shared/data")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    machine = {"cores": len(os.sched_getaffinity(0)), "cpu": _cpu_model()}
    for name in args.datasets:
        key = f"{name}[{args.tag}]" if args.tag else name

        def save(figures: dict[str, Any], key: str = key) -> None:
            results[key] = figures | {
                "machine": machine,
                "command": " ".join(["python", "bench/results.py", *sys.argv[1:]]),
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")

        save(
            run_dataset(
                name, args.work, args.combos, args.overrides, args.reuse, args.seed_shards, save
            )
        )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
