"""Train settings across data sets and seeds: validation picks, test reports.

    python bench/defaults.py --work /tmp/crisis-mm-results [--datasets crisis4 crisismmd5]
                             [--seeds 1 2 3] [-S train.lr=0.0003 -S weights=none] [--tag name]

Each data set's directory under --work is one `bench/results.py` (or `dvc repro`) working
directory with `features/` already written (prepare + featurize ran once). For each seed the
train stage's own `fit` (stages/training.py: the params.yaml `train:` block, with the
overrides; `modality` per data set) trains on train, selects on val, and is scored on val and
test (accuracy, macro-F1, expected calibration error); on the cross-validation path `test` is
the refit and `ensemble_test` the k fold models averaged, from the same folds (and with
--cv-on-train, folds of the train split alone, so that val scores both unseen). Prints
mean +- sd over the seeds and appends every figure to --out, keyed by data set and tag.
Choices must rest on the val figures; test is reported, never used to pick. Not a test:
minutes of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # a small MLP: one thread, no spinning
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

from bench.results import _cpu_model, set_dotted  # noqa: E402
from stages.calibration import expected_calibration_error  # noqa: E402
from stages.folds import training_groups  # noqa: E402
from stages.loss import class_weights  # noqa: E402
from stages.model import EnsembleMLP, predict_proba, read_features  # noqa: E402
from stages.training import OPTIONAL_KEYS, TRAIN_KEYS, concat, fit, refit_after_cv  # noqa: E402

MODALITY = {"crisis4": "both", "crisismmd5": "text", "crisismmd4": "text", "mediaeval": "text"}


def scores(module: Any, split: dict[str, torch.Tensor], n_classes: int) -> dict[str, float]:
    proba = predict_proba(module, split["text"], split["image"])
    raw = predict_proba(module, split["text"], split["image"], calibrated=False)
    y, pred = split["label"].numpy(), proba.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(
            f1_score(y, pred, labels=range(n_classes), average="macro", zero_division=0)
        ),
        "ece": expected_calibration_error(proba, y),
        "ece_uncalibrated": expected_calibration_error(raw, y),
        "rows": int(len(y)),
    }


def run(
    work: Path,
    params: dict[str, Any],
    seed: int,
    descriptions: np.ndarray | None = None,
    cv_on_train: bool = False,
) -> dict[str, Any]:
    meta = json.loads((work / "features" / "meta.json").read_text())
    n = len(meta["classes"])
    data = {
        s: read_features(work / "features" / f"{s}.safetensors", n, meta["dims"])
        for s in ("train", "val", "test")
    }
    zero_shot = {}
    if descriptions is not None:  # each post's cosine similarity to each class description
        d = torch.as_tensor(descriptions / np.linalg.norm(descriptions, axis=1, keepdims=True))
        for name, split in data.items():
            sims = (split["text"] / split["text"].norm(dim=1, keepdim=True)) @ d.float().T
            y, pred = split["label"].numpy(), sims.argmax(dim=1).numpy()
            zero_shot[name] = {
                "accuracy": float(accuracy_score(y, pred)),
                "macro_f1": float(
                    f1_score(y, pred, labels=range(n), average="macro", zero_division=0)
                ),
            }
            split["text"] = torch.cat([split["text"], sims], dim=1)
    cfg = {key: params["train"][key] for key in TRAIN_KEYS} | {"seed": seed}
    cfg |= {key: params["train"].get(key, default) for key, default in OPTIONAL_KEYS.items()}
    weights = class_weights(
        params["weights"],
        data["train"]["label"].numpy(),
        meta["classes"],
        params.get("manual_weights"),
        cfg["auto_weight_power"],
    )
    start = time.perf_counter()
    rows = len(data["train"]["label"]) + len(data["val"]["label"])
    prep = params["prepare"]
    if cv_on_train:
        # Validation-only comparison with the single split: cross-validate and refit on the
        # train split alone, so that val stays unseen (the single split's val is optimistic:
        # it picked the epoch).
        groups = training_groups(
            work / "dataset",
            data["train"]["id"].numpy(),
            prep["dummy_size"],
            prep["near_duplicate_bits"],
            prep["min_shared_words"],
        )
        module, _, info, cv = refit_after_cv(
            data["train"],
            n,
            params["modality"],
            {**cfg, "cv_folds": max(cfg["cv_folds"], 2), "cv_model": "refit"},
            weights,
            groups=groups,
        )
        ensemble = ensemble_of(cv, info["temperature"])
        return {
            "seed": seed,
            "seconds": round(time.perf_counter() - start, 1),
            "best_epoch": info["best_epoch"],
            "temperature": info["temperature"],
            "oof_macro_f1": info["oof_macro_f1"],
            "val": scores(module, data["val"], n),
            "test": scores(module, data["test"], n),
            "ensemble_val": scores(ensemble, data["val"], n),
            "ensemble_test": scores(ensemble, data["test"], n),
        }
    if cfg["cv_folds"] >= 2 and rows <= cfg["cv_max_rows"]:
        # The stage's small-data path, and beside it the k fold models kept as an ensemble
        # (mean logits, the same out-of-fold temperature), to decide between the two.
        ids = np.concatenate([data["train"]["id"].numpy(), data["val"]["id"].numpy()])
        groups = training_groups(
            work / "dataset",
            ids,
            prep["dummy_size"],
            prep["near_duplicate_bits"],
            prep["min_shared_words"],
        )
        module, _, info, cv = refit_after_cv(
            concat(data["train"], data["val"]),
            n,
            params["modality"],
            {**cfg, "cv_model": "refit"},
            weights,
            groups=groups,
        )
        ensemble = ensemble_of(cv, info["temperature"])
        # No held-out validation rows are left: "val" is the out-of-fold estimate.
        oof = {"macro_f1": info["oof_macro_f1"]}
        return {
            "seed": seed,
            "seconds": round(time.perf_counter() - start, 1),
            "best_epoch": info["best_epoch"],
            "temperature": info["temperature"],
            "val": oof,
            "test": scores(module, data["test"], n),
            "ensemble_test": scores(ensemble, data["test"], n),
        }
    module, _, info = fit(data["train"], data["val"], n, params["modality"], cfg, weights)
    return {
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
        "best_epoch": info["best_epoch"],
        "temperature": info.get("temperature"),
        "val": scores(module, data["val"], n),
        "test": scores(module, data["test"], n),
        **({"zero_shot": zero_shot} if zero_shot else {}),
    }


def ensemble_of(cv: Any, temperature: float) -> EnsembleMLP:
    ensemble = EnsembleMLP.of(cv.modules)
    ensemble.temperature.fill_(temperature)
    return ensemble


def summary(runs: list[dict[str, Any]], split: str, key: str) -> str:
    values = [r[split][key] for r in runs if key in r.get(split, {})]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/crisis-mm-results"))
    parser.add_argument("--datasets", nargs="+", default=["crisis4", "crisismmd5"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    parser.add_argument("--tag", default="defaults")
    parser.add_argument(
        "--cv-on-train",
        action="store_true",
        help="cross-validate on train only and score val (a val comparison)",
    )
    parser.add_argument(
        "--described",
        action="store_true",
        help="append the post-to-class_descriptions similarities to the text",
    )
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "defaults.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.datasets:
        params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        params["modality"] = MODALITY[name]
        for assignment in args.overrides:
            set_dotted(params, assignment)
        descriptions = None
        if args.described:
            from stages.encoders import load_encoder

            classes = json.loads((args.work / name / "features" / "meta.json").read_text())[
                "classes"
            ]
            descriptions = load_encoder(params["featurize"]).encode_text(
                [params["class_descriptions"][c] for c in classes]
            )
        runs = []
        for seed in args.seeds:
            runs.append(run(args.work / name, params, seed, descriptions, args.cv_on_train))
            r = runs[-1]
            print(
                f"{name}[{args.tag}] seed {seed}: val macro-F1 {r['val']['macro_f1']:.4f}, "
                f"test macro-F1 {r['test']['macro_f1']:.4f} acc {r['test']['accuracy']:.4f}, "
                f"ECE {r['test']['ece_uncalibrated']:.3f} -> {r['test']['ece']:.3f}, "
                f"epoch {r['best_epoch']}, {r['seconds']}s",
                flush=True,
            )
        line = {
            s: {k: summary(runs, s, k) for k in ("accuracy", "macro_f1", "ece", "ece_uncalibrated")}
            for s in ("val", "test", "ensemble_val", "ensemble_test")
        }
        print(
            f"{name}[{args.tag}] {len(runs)} seeds, {runs[0]['test']['rows']} test posts: "
            f"{json.dumps(line)}",
            flush=True,
        )
        results[f"{name}[{args.tag}]"] = {
            "overrides": args.overrides,
            "modality": params["modality"],
            "weights": params["weights"],
            "train": params["train"],
            "runs": runs,
            "mean_sd": line,
            "command": " ".join(["python", "bench/defaults.py", *sys.argv[1:]]),
            "cpu": _cpu_model(),
            "load": round(os.getloadavg()[0], 2),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
