"""How the scaling tests start a stage under two CPU processes: `accelerate launch --multi_gpu`
(torchrun underneath; `--cpu --num_processes 2` would start one process without an MPI
hostfile), with no mixed precision and no dynamo so the run matches a single process."""

from __future__ import annotations

import sys
from pathlib import Path

BIN = Path(sys.executable).parent
LAUNCH_2CPU = [
    str(BIN / "accelerate"),
    "launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
