"""The life cycle of a stage run under `accelerate launch` / torchrun (one process otherwise):
every rank works, the main rank alone writes, and all of them leave together."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def process_group(cpu_only: bool) -> Iterator[Any]:
    """Yield accelerate's PartialState (state.is_main_process: the writer). On a clean exit
    every rank waits for the writer, then leaves the process group: a rank that exits with the
    group still open can abort in gloo's teardown and fail the whole launch. A finished
    non-writer rank then skips interpreter teardown, where gloo's threads can still abort it.
    cpu_only: without it, torchrun on a CPU-only machine starts N independent runs instead of
    one gloo process group."""
    from accelerate import PartialState  # heavy: only for a stage run

    state = PartialState(cpu=cpu_only)
    yield state
    state.wait_for_everyone()
    state.destroy_process_group()
    if not state.is_main_process:
        logging.shutdown()
        os._exit(0)
