"""The design's small-data regime: 400 labelled posts (100 per class), tested on disjoint posts.

    python bench/small_data.py [--work /tmp/crisis-mm-small] [--draws 5]
                               [--variants shipped single] [-S train.lr=0.0003 ...]
                               [--out reports/small_data.json]

The pool: crisis4 (real images) + CrisisMMD v2.0 agreed humanitarian (default 4-class label
map; its images are not distributed, so every row gets prepare's white dummy, as the design's
cleaning does), through the pipeline's own prepare + featurize (run once in --work; pass
--work again to reuse). All prepared rows are pooled; posts that share an image file or a
near-duplicate image or a normalised text of >= 4 words (prepare's relations, with its
params) form one group, and a group is never on both sides; the stage's cross-validation
folds keep the same groups.

Each draw (seeded by its number): the groups are split into a training and a test side, then
100 random training posts per class and up to 100 test posts per class are sampled (urgent_help
has ~125 posts in the whole pool, so its test share is what is left: the count is printed).
On each draw:
- `shipped`: the train stage's `fit` with params.yaml's train block (+ -S overrides); the 400
  posts are train + val as prepare would cut them (10% of groups, stratified, for validation);
- `single`: the same with `cv_folds: 0` (one validation split: early stopping on ~40 posts);
- `refit`, `ensemble`: with cross-validation on, the two ends of the same folds (one model
  refitted on the 400, or the k fold models averaged); `shipped` is the one params.yaml's
  `train.cv_model` names;
- `probe`: logistic regression on the standardised features, C by 5-fold CV on the 400;
- `described` (when asked): `shipped`, with the post's cosine similarity to each class
  description appended to its text features;
- `zero_shot`: no training; cosine similarity of each post's text embedding to each of
  params.yaml's `class_descriptions`, embedded by the same frozen text encoder.
Prints mean +- sd over the draws of accuracy and macro-F1 (and ECE for the MLPs). Not a test.
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

os.environ.setdefault("OMP_NUM_THREADS", "1")
import warnings  # noqa: E402

# scikit-learn 1.8 announces LogisticRegressionCV default changes on every fit.
warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402
from sklearn.model_selection import StratifiedGroupKFold  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from bench.defaults import ensemble_of, scores  # noqa: E402
from bench.results import SHARED, run_stage, set_dotted  # noqa: E402
from stages import csvsafe  # noqa: E402
from stages import groups as grouping  # noqa: E402
from stages.images import encode_jpeg, white_image  # noqa: E402
from stages.loss import class_weights  # noqa: E402
from stages.model import read_features  # noqa: E402
from stages.training import OPTIONAL_KEYS, TRAIN_KEYS, concat, fit, refit_after_cv, take  # noqa: E402

PER_CLASS = 100
SPLIT_FILES = {"train": "train_balanced.csv", "val": "val.csv", "test": "test_balanced.csv"}


def pool_params(base: dict[str, Any]) -> dict[str, Any]:
    root = SHARED / "crisismmd"
    sources = [
        {
            "name": "crisis4",
            "format": "csv",
            "path": str(SHARED / "crisis4" / "crisis4.csv"),
            "image_root": str(SHARED),
        }
    ]
    sources += [
        {
            "name": f"crisismmd_{s}",
            "format": "crisismmd",
            "split": s,
            "path": str(root / f"task_humanitarian_text_img_agreed_lab_{s}.tsv"),
            "image_root": str(root / "absent_images"),
        }
        for s in ("train", "dev", "test")
    ]
    params = {**base, "data": {"sources": sources}}
    params["prepare"] = {**base["prepare"], "balance": "none"}
    return params


def load_pool(
    work: Path, prep: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], list[str], np.ndarray]:
    """Every prepared row's features, the class names, and each row's group number."""
    meta = json.loads((work / "features" / "meta.json").read_text())
    parts = [
        read_features(work / "features" / f"{s}.safetensors", len(meta["classes"]), meta["dims"])
        for s in SPLIT_FILES
    ]
    pool = concat(*parts)
    frames = [
        csvsafe.read_csv(work / "dataset" / name, int_columns=("id",))
        for name in SPLIT_FILES.values()
    ]
    ids = np.concatenate([f["id"].to_numpy() for f in frames])
    if not np.array_equal(ids, pool["id"].numpy()):
        raise SystemExit(f"{work}: features and dataset CSVs disagree on row order; re-run")
    texts = [t for f in frames for t in f["text"]]
    images = [p for f in frames for p in f["image_path"]]
    return pool, list(meta["classes"]), pool_groups(work, texts, images, prep)


def pool_groups(
    work: Path, texts: list[str], images: list[str], prep: dict[str, Any]
) -> np.ndarray:
    """prepare's relations (stages/groups.py: same or near-duplicate image, same normalised
    text of >= min_shared_words words; the white dummy links nothing) over the whole pool."""
    digests = [Path(p).stem for p in images]
    dummy = encode_jpeg(white_image(prep["dummy_size"]))[0]
    hashes = {
        d: grouping.image_hash(work / "dataset" / p)
        for d, p in dict(zip(digests, images)).items()
        if d != dummy
    }
    found = grouping.group_rows(
        digests,
        texts,
        [None] * len(texts),
        dummy,
        hashes,
        prep["near_duplicate_bits"],
        prep["min_shared_words"],
        False,
    )
    return np.asarray(found.group)


def draw(
    labels: np.ndarray, group: np.ndarray, n_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Groups split into a training side and a test side, then 100 random posts per class
    from the training side and up to 100 per class from the test side (as prepare splits by
    group and then samples its *_100 files). A class too rare for both sides (urgent_help)
    has its groups on the training side until it holds 100 posts; the rest is the test's."""
    rng = np.random.default_rng(seed)
    names = rng.permutation(np.unique(group))
    side = dict(zip(names, rng.random(len(names)) < 0.5))  # True: training side
    counts = np.bincount(labels, minlength=n_classes)
    for c in np.flatnonzero(counts < 4 * PER_CLASS):
        have = 0
        for g in names:
            in_group = int(((group == g) & (labels == c)).sum())
            if in_group:
                side[g] = have < PER_CLASS
                have += in_group if side[g] else 0
    on_train = np.array([side[g] for g in group])
    pick = [
        (
            rng.permutation(np.flatnonzero(on_train & (labels == c)))[:PER_CLASS],
            rng.permutation(np.flatnonzero(~on_train & (labels == c)))[:PER_CLASS],
        )
        for c in range(n_classes)
    ]
    return np.concatenate([t for t, _ in pick]), np.concatenate([s for _, s in pick])


def carve_val(
    data: dict[str, torch.Tensor], group: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """prepare's cut: ~10% of the groups, stratified by class, for validation."""
    splitter = StratifiedGroupKFold(n_splits=10, shuffle=True, random_state=seed)
    fit_rows, val_rows = next(splitter.split(np.zeros(len(group)), data["label"].numpy(), group))
    return fit_rows, val_rows


def cosine(text: np.ndarray, descriptions: np.ndarray) -> np.ndarray:
    a = text / np.linalg.norm(text, axis=1, keepdims=True)
    return a @ (descriptions / np.linalg.norm(descriptions, axis=1, keepdims=True)).T


def plain(y: np.ndarray, pred: np.ndarray, n: int) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=range(n), average="macro", zero_division=0)),
    }


def one_draw(
    pool: dict[str, torch.Tensor],
    group: np.ndarray,
    classes: list[str],
    params: dict[str, Any],
    variants: list[str],
    k: int,
    descriptions: np.ndarray | None,
) -> dict[str, Any]:
    n = len(classes)
    labels = pool["label"].numpy()
    train_rows, test_rows = draw(labels, group, n, seed=k)
    train, test = take(pool, train_rows), take(pool, test_rows)
    fit_rows, val_rows = carve_val(train, group[train_rows], seed=k)
    tr, val = take(train, fit_rows), take(train, val_rows)
    # the train+val order fit() pools them in, for its grouped folds
    cv_groups = np.concatenate([group[train_rows][fit_rows], group[train_rows][val_rows]])
    out: dict[str, Any] = {
        "draw": k,
        "test_per_class": np.bincount(test["label"].numpy(), minlength=n).tolist(),
        "val_rows": len(val_rows),
    }
    cfg = {key: params["train"][key] for key in TRAIN_KEYS} | {"seed": k}
    cfg |= {key: params["train"].get(key, default) for key, default in OPTIONAL_KEYS.items()}
    weights = class_weights(
        params["weights"],
        tr["label"].numpy(),
        classes,
        params.get("manual_weights"),
        cfg["auto_weight_power"],
    )
    y_test = test["label"].numpy()
    for variant in variants:
        start = time.perf_counter()
        if variant == "described":  # the post-to-description similarities as extra inputs
            sims = torch.as_tensor(cosine(pool["text"].numpy(), descriptions), dtype=torch.float32)
            with_sims = {**pool, "text": torch.cat([pool["text"], sims], dim=1)}
            train_d = take(with_sims, train_rows)
            module, _, info = fit(
                take(train_d, fit_rows),
                take(train_d, val_rows),
                n,
                params["modality"],
                cfg,
                weights,
                groups=lambda: cv_groups,
            )
            out[variant] = {
                **scores(module, take(with_sims, test_rows), n),
                "best_epoch": info["best_epoch"],
                "seconds": round(time.perf_counter() - start, 1),
            }
            continue
        if variant == "shipped" and cfg["cv_folds"] >= 2:
            # Both ends of cross-validation, from the same folds: the refit and the ensemble.
            module, _, info, cv = refit_after_cv(
                concat(tr, val),
                n,
                params["modality"],
                {**cfg, "cv_model": "refit"},
                weights,
                groups=cv_groups,
            )
            out["refit"] = scores(module, test, n)
            out["ensemble"] = scores(ensemble_of(cv, info["temperature"]), test, n)
            module = (
                ensemble_of(cv, info["temperature"]) if cfg["cv_model"] == "ensemble" else module
            )
        else:
            run_cfg = cfg if variant == "shipped" else {**cfg, "cv_folds": 0}
            module, _, info = fit(tr, val, n, params["modality"], run_cfg, weights)
        out[variant] = {
            **scores(module, test, n),
            "best_epoch": info["best_epoch"],
            "seconds": round(time.perf_counter() - start, 1),
        }
    x = {
        "text": [train["text"]],
        "image": [train["image"]],
        "both": [train["text"], train["image"]],
    }[params["modality"]]
    xs = {"text": [test["text"]], "image": [test["image"]], "both": [test["text"], test["image"]]}[
        params["modality"]
    ]
    scaler = StandardScaler().fit(torch.cat(x, 1).numpy())
    probe = LogisticRegressionCV(
        Cs=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3], cv=5, scoring="f1_macro", max_iter=3000
    ).fit(scaler.transform(torch.cat(x, 1).numpy()), train["label"].numpy())
    out["probe"] = {
        **plain(y_test, probe.predict(scaler.transform(torch.cat(xs, 1).numpy())), n),
        "C": float(probe.C_[0]),
    }
    if descriptions is not None:
        zs = cosine(test["text"].numpy(), descriptions)
        out["zero_shot"] = plain(y_test, zs.argmax(axis=1), n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/crisis-mm-small"))
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["shipped", "single"])
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    parser.add_argument("--tag", default="shipped")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "small_data.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for assignment in args.overrides:
        set_dotted(params, assignment)
    work = args.work
    if not (work / "features" / "meta.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        if not (work / "stages").exists():
            (work / "stages").symlink_to(REPO / "stages")
        (work / "params.yaml").write_text(yaml.safe_dump(pool_params(params), sort_keys=False))
        print(
            f"prepare {run_stage(work, 'prepare'):.0f}s, featurize "
            f"{run_stage(work, 'featurize'):.0f}s",
            flush=True,
        )
    pool, classes, group = load_pool(work, params["prepare"])
    descriptions = None
    if params.get("class_descriptions"):
        from stages.encoders import load_encoder

        encoder = load_encoder(params["featurize"])
        descriptions = encoder.encode_text([params["class_descriptions"][c] for c in classes])
    print(
        f"pool: {len(group)} posts, {len(np.unique(group))} groups, per class "
        f"{np.bincount(pool['label'].numpy()).tolist()} ({classes})",
        flush=True,
    )
    draws = []
    for k in range(args.draws):
        draws.append(one_draw(pool, group, classes, params, args.variants, k, descriptions))
        d = draws[-1]
        print(
            f"draw {k}: test per class {d['test_per_class']}, "
            + ", ".join(f"{v} {d[v]['macro_f1']:.4f}" for v in d if isinstance(d[v], dict)),
            flush=True,
        )
    summary = {}
    for name in [v for v in draws[0] if isinstance(draws[0][v], dict)]:
        summary[name] = {}
        for key in ("accuracy", "macro_f1", "ece"):
            values = [d[name][key] for d in draws if key in d[name]]
            if values:
                summary[name][key] = (
                    f"{statistics.mean(values):.4f} +- "
                    f"{statistics.stdev(values) if len(values) > 1 else 0:.4f}"
                )
        print(f"{name:10} {summary[name]}", flush=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.tag] = {
        "draws": draws,
        "mean_sd": summary,
        "overrides": args.overrides,
        "train": params["train"],
        "modality": params["modality"],
        "weights": params["weights"],
        "command": " ".join(["python", "bench/small_data.py", *sys.argv[1:]]),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "unknown",
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
