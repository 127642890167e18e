"""Pipeline cost: a full `dvc repro`, then `dvc exp run -S weights=manual`, then a no-op
`dvc repro`, each in a fresh git clone of this repository (the shipped sample).

    python bench/pipeline.py [--repeats 3] [--out reports/bench_pipeline.json]

A fresh clone has an empty DVC cache and run cache, so every repeat measures the same thing:
the full run builds everything; the experiment changes a train-only param, so only train and
evaluate run; the no-op finds every stage up to date. The clone is of the committed HEAD, with
this interpreter's bin directory first on PATH (its dvc and python). Prints each time and the
median / min / max over the repeats, with the ratios to the full run.
Not a test: the machine's load changes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = {
    "full": ["dvc", "repro"],
    "experiment": ["dvc", "exp", "run", "-S", "weights=manual"],
    "noop": ["dvc", "repro"],
}


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"{' '.join(command)} failed in {cwd} (exit {done.returncode})")
    return elapsed


def one_round(env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="crisis-mm-bench-") as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        # The experiment is committed to a temporary ref: git needs an identity in the clone.
        for key, value in (("user.name", "bench"), ("user.email", "bench@localhost")):
            subprocess.run(["git", "config", key, value], cwd=clone, check=True)
        times = {}
        for name, command in STEPS.items():
            times[name] = timed(command, clone, env)
            print(
                f"  {name:10} {' '.join(command):32} {times[name]:7.1f} s  "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS for every stage (default: torch's own choice)"
    )
    args = parser.parse_args()
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"clones of {REPO} at {head}; load before {os.getloadavg()}", flush=True)
    rounds = []
    for i in range(args.repeats):
        print(f"round {i + 1}/{args.repeats}", flush=True)
        rounds.append(one_round(env))
    summary = {}
    for name in STEPS:
        values = [r[name] for r in rounds]
        summary[name] = {
            "median_s": statistics.median(values),
            "min_s": min(values),
            "max_s": max(values),
            "runs": values,
        }
    full = summary["full"]["median_s"]
    for name, figures in summary.items():
        print(
            f"{name:10} median {figures['median_s']:6.1f} s (min {figures['min_s']:.1f}, "
            f"max {figures['max_s']:.1f}); {figures['median_s'] / full:.3f} of the full run"
        )
    print(f"load after {os.getloadavg()}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "commit": head,
                    "steps": {k: " ".join(v) for k, v in STEPS.items()},
                    "summary": summary,
                    "load_after": os.getloadavg(),
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
