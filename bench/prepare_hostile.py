"""Prepare on hostile text: `python -m stages.prepare` on the shipped sample alone, and on the
sample plus one extra crisis4 row whose text is 1 MB of tag soup (`<a<a<a...`), issue 16.

    python bench/prepare_hostile.py [--repeats 3] [--chars 1000000]

Each run works in its own temporary copy of this working tree's stages/, params.yaml and
dataset/raw (uncommitted changes included), with this interpreter. The two variants alternate,
so a change in the machine's load falls on both; prints each time, the medians and their ratio
(target: at most 2), the CPU, and the ledger line of the hostile row, which shows the row went
through cleaning. Not a test: the machine's load changes the figures.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path("dataset/raw/crisis4_sample.csv")
HOSTILE_ID = "999999999999999999"
TARGET = 2.0


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    return next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
        "unknown",
    )


def workspace(tmp: Path, hostile_chars: int) -> Path:
    """A copy of what prepare reads; with hostile_chars > 0, one more crisis4 row whose text is
    that many characters of `<a`, on the first row's image and label."""
    work = tmp / "repo"
    shutil.copytree(REPO / "stages", work / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "dataset" / "raw", work / "dataset" / "raw")
    shutil.copy2(REPO / "params.yaml", work / "params.yaml")
    if hostile_chars:
        path = work / SAMPLE
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            fields, first = reader.fieldnames, next(reader)
        row = first | {"post_id": HOSTILE_ID, "text": ("<a" * hostile_chars)[:hostile_chars]}
        with path.open("a", encoding="utf-8", newline="") as fh:
            csv.DictWriter(fh, fieldnames=fields).writerow(row)
    return work


def run_prepare(hostile_chars: int, env: dict[str, str]) -> tuple[float, str]:
    with tempfile.TemporaryDirectory(prefix="crisis-mm-hostile-") as tmp:
        work = workspace(Path(tmp), hostile_chars)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "stages.prepare"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - started
        if done.returncode:
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
            raise SystemExit(f"prepare failed in {work} (exit {done.returncode})")
        ledger = ""
        if hostile_chars:
            with (work / "reports" / "prepare_ledger.csv").open(encoding="utf-8") as fh:
                ledger = next(
                    (
                        ",".join(r.values())
                        for r in csv.DictReader(fh)
                        if r.get("row_id") == HOSTILE_ID
                    ),
                    "(hostile row not in ledger)",
                )
        return elapsed, ledger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--chars", type=int, default=1_000_000, help="length of the hostile row's text"
    )
    args = parser.parse_args()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load before {os.getloadavg()}", flush=True)
    times: dict[str, list[float]] = {"sample": [], "hostile": []}
    ledger = ""
    for i in range(args.repeats):
        for name, chars in (("sample", 0), ("hostile", args.chars)):
            elapsed, line = run_prepare(chars, env)
            times[name].append(elapsed)
            ledger = line or ledger
            print(
                f"  round {i + 1}: {name:8} {elapsed:6.2f} s  load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    sample, hostile = (statistics.median(times[k]) for k in ("sample", "hostile"))
    ratio = hostile / sample
    print(f"sample alone:            median {sample:6.2f} s  {times['sample']}")
    print(f"plus {args.chars:,}-char row: median {hostile:6.2f} s  {times['hostile']}")
    print(f"ratio {ratio:.2f} (target <= {TARGET:g}: {'met' if ratio <= TARGET else 'MISSED'})")
    print(f"hostile row in the ledger: {ledger}")
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
