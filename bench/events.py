"""Unseen events: train on some disasters, test on another, beside the random grouped split.

    python bench/events.py [--datasets crisis4 crisismmd5] [--seeds 3]
                           [--work /tmp/crisis-mm-events] [--out reports/events.json]

For each data set, one fold per held-out event (`prepare.group_by=event`,
`prepare.test_events=[<event>]`: validation is carved from other whole events too) and one
fold on the random leak-free grouped split (`group_by=content`, the default). Each fold runs
the pipeline's own stages (`python -m stages.<name>`) on a snapshot of the committed code
(`git archive HEAD stages`, so edits in progress elsewhere cannot change a running fold):
prepare and featurize once, then train + evaluate for each seed. Prints one line per run and a
markdown table (mean +- sd over seeds, test posts, 95% bootstrap interval of the first seed)
and writes every figure to --out. Not a test: tens of minutes of CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import DATASETS, REPO, SHARED, merge, run_stage  # noqa: E402  (bench/results.py)

EVENTS = {
    # crisis4: the three events with the most posts of the non-misinformation classes
    # (urgent_help only occurs in Hurricane Sandy, Nepal and Garissa).
    "crisis4": ["Hurricane Sandy", "Nepal_earthquake", "BostonMarathon"],
    "crisismmd5": [
        "hurricane_maria",
        "hurricane_harvey",
        "hurricane_irma",
        "srilanka_floods",
        "mexico_earthquake",
        "california_wildfires",
        "iraq_iran_earthquake",
    ],
}
MODALITY = {"crisis4": "both", "crisismmd5": "text"}  # CrisisMMD's images are absent


def snapshot(work: Path) -> None:
    """The committed stages/ package, extracted into `work`."""
    archive = subprocess.run(
        ["git", "archive", "HEAD", "stages"], cwd=REPO, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(work, filter="data")


def run_fold(name: str, fold: str, work: Path, code: Path, seeds: int) -> dict[str, Any]:
    base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params = merge(base, DATASETS[name]["params"])
    params["prepare"]["balance"] = "none"
    params["modality"] = MODALITY[name]
    if fold != "random":
        params["prepare"] |= {"group_by": "event", "test_events": [fold]}
    work.mkdir(parents=True, exist_ok=True)
    if (work / "stages").is_symlink():
        (work / "stages").unlink()
    (work / "stages").symlink_to(code / "stages")
    out: dict[str, Any] = {"fold": fold, "runs": [], "code": (code / "commit").read_text()}
    params["train"]["seed"] = 42
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    out["prepare_s"] = round(run_stage(work, "prepare"), 1)
    out["prepare"] = {
        k: v
        for k, v in json.loads((work / "reports" / "prepare.json").read_text()).items()
        if k in ("rows", "drops", "groups")
    }
    out["featurize_s"] = round(run_stage(work, "featurize"), 1)
    out["rows"] = json.loads((work / "features" / "meta.json").read_text())["rows"]
    for seed in range(42, 42 + seeds):
        params["train"]["seed"] = seed
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        seconds = run_stage(work, "train") + run_stage(work, "evaluate")
        test = json.loads((work / "reports" / "metrics.json").read_text())["test"]
        run = {
            "seed": seed,
            "seconds": round(seconds, 1),
            "rows": test["rows"],
            **{
                k: test.get(k)
                for k in (
                    "accuracy",
                    "macro_f1",
                    "accuracy_ci95_lo",
                    "accuracy_ci95_hi",
                    "macro_f1_ci95_lo",
                    "macro_f1_ci95_hi",
                )
            },
            "per_class_f1": {c: v["f1"] for c, v in test["per_class"].items()},
        }
        out["runs"].append(run)
        print(
            f"{name} [{fold}] seed {seed}: {test['rows']} test posts, acc "
            f"{run['accuracy']:.4f} macro-F1 {run['macro_f1']:.4f} ({seconds:.0f}s, load "
            f"{os.getloadavg()[0]:.1f})",
            flush=True,
        )
    return out


def table(results: dict[str, Any]) -> str:
    lines = [
        "| data set | test split | train / val / test posts | accuracy (mean ± sd) | "
        "macro-F1 (mean ± sd) | macro-F1 95% CI (seed 42) |",
        "|---|---|---|---|---|---|",
    ]
    for name, folds in results.items():
        for fold in folds:
            if not fold.get("runs"):
                continue
            acc = np.array([r["accuracy"] for r in fold["runs"]])
            f1 = np.array([r["macro_f1"] for r in fold["runs"]])
            first, rows = fold["runs"][0], fold["rows"]
            where = "random grouped" if fold["fold"] == "random" else f"event: {fold['fold']}"
            lines.append(
                f"| {name} | {where} | {rows['train']} / {rows['val']} / {rows['test']} | "
                f"{acc.mean():.3f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.3f} | "
                f"{f1.mean():.3f} ± {f1.std(ddof=1) if len(f1) > 1 else 0:.3f} | "
                f"{first['macro_f1_ci95_lo']:.3f}–{first['macro_f1_ci95_hi']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(EVENTS), choices=list(EVENTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/crisis-mm-events"))
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "events.json")
    parser.add_argument("--folds", nargs="*", help="only these folds ('random' or event names)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: these results need ../shared/data")
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    # One snapshot for the whole run, so every fold runs the same code.
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    code = args.work / f"code-{commit[:10]}"
    if not (code / "stages").is_dir():
        code.mkdir(parents=True, exist_ok=True)
        snapshot(code)
        (code / "commit").write_text(commit)
    print(f"code: {commit} in {code}", flush=True)
    for name in args.datasets:
        folds = [f for f in ["random", *EVENTS[name]] if not args.folds or f in args.folds]
        done = {f["fold"]: f for f in results.get(name, [])}
        for fold in folds:
            slug = fold.replace(" ", "_")
            try:
                done[fold] = run_fold(name, fold, args.work / name / slug, code, args.seeds)
            except SystemExit as exc:  # results.run_stage: a stage failed; go on with the rest
                print(f"{name} [{fold}]: {exc}", flush=True)
                done[fold] = {"fold": fold, "error": str(exc)}
            results[name] = list(done.values())
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(table(results))


if __name__ == "__main__":
    main()
