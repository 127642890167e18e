"""Peak memory of the featurize stage at 1x, 4x and 16x the posts (it must stay flat).

    python bench/featurize_memory.py [--posts 800] [--scales 1 4 16]

For each scale, a working directory whose params.yaml has one source: a random sample of
posts x scale crisis4 posts (../shared/data/crisis4, real images, shared as in the real data),
`prepare.balance: none`; `python -m stages.prepare` builds the dataset (not measured), then
`python -m stages.featurize` runs with the repository's `featurize:` params while its process
tree is sampled every 0.25 s: the peak of the main process's RSS, and the peak over time of
the tree's summed PSS (proportional set size: pages shared by the DataLoader workers with
their parent counted once). Prints both, the run time and posts/s per scale. `watch` (also
used by bench/featurize_repro.py) returns the tree's CPU seconds and its largest single RSS too.
Not a test: minutes of CPU on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def watch(command: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Run `command`, sampling its process tree's memory; peak figures in MB."""
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    main, peak_rss, peak_pss, peak_any = psutil.Process(proc.pid), 0.0, 0.0, 0.0
    while proc.poll() is None:
        try:
            tree = [main] + main.children(recursive=True)
            peak_rss = max(peak_rss, main.memory_info().rss)
            pss = 0
            for p in tree:
                try:
                    info = p.memory_full_info()
                    pss += info.pss
                    peak_any = max(peak_any, info.rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak_pss = max(peak_pss, pss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.25)
    _, err = proc.communicate()
    if proc.returncode:
        sys.stderr.write(err[-3000:])
        raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode})")
    # peak_max_rss: the largest RSS of any one process of the tree (under `dvc repro`, the
    # stage's own process rather than dvc's).
    # CPU seconds of the whole tree: every process in it was waited for by its parent.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": cpu_seconds,
        "peak_main_rss_mb": peak_rss / 2**20,
        "peak_tree_pss_mb": peak_pss / 2**20,
        "peak_max_rss_mb": peak_any / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=800)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    source = SHARED / "crisis4" / "crisis4.csv"
    if not source.is_file():
        raise SystemExit(f"{source} is absent: this benchmark needs ../shared/data")
    crisis4 = pd.read_csv(source, dtype=str, keep_default_na=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    print(
        f"featurize settings {json.dumps(params['featurize'])}; load {os.getloadavg()}", flush=True
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="crisis-mm-mem-") as tmp:
        for scale in args.scales:
            n = args.posts * scale
            if n > len(crisis4):
                raise SystemExit(f"{n} posts asked, crisis4 has {len(crisis4)}")
            work = Path(tmp) / f"x{scale}"
            work.mkdir()
            (work / "stages").symlink_to(REPO / "stages")
            crisis4.sample(n=n, random_state=0).to_csv(work / "posts.csv", index=False)
            run = params | {
                "data": {
                    "sources": [
                        {
                            "name": "crisis4",
                            "path": "posts.csv",
                            "format": "csv",
                            "image_root": str(SHARED),
                        }
                    ]
                }
            }
            run["prepare"] = params["prepare"] | {"balance": "none"}
            (work / "params.yaml").write_text(yaml.safe_dump(run), encoding="utf-8")
            subprocess.run(
                [sys.executable, "-m", "stages.prepare"],
                cwd=work,
                env=env,
                check=True,
                capture_output=True,
            )
            rows = json.loads((work / "dataset" / "classes.json").read_text()) and sum(
                len(pd.read_csv(work / "dataset" / f"{s}.csv"))
                for s in ("train_balanced", "val", "test_balanced")
            )
            figures = watch([sys.executable, "-m", "stages.featurize"], work, env)
            figures |= {
                "scale": scale,
                "posts": rows,
                "posts_per_s": rows / figures["seconds"],
                "load": round(os.getloadavg()[0], 2),
            }
            results.append(figures)
            print(
                f"{scale:>3}x: {rows} posts featurized in {figures['seconds']:.0f} s "
                f"({figures['posts_per_s']:.0f} posts/s); peak RSS main process "
                f"{figures['peak_main_rss_mb']:.0f} MB, peak PSS of the process tree "
                f"{figures['peak_tree_pss_mb']:.0f} MB; load {figures['load']}",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
