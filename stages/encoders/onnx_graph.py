"""ONNX graphs of the encoders' torch networks, exported here and run by onnxruntime on the CPU.

A graph is exported from the weights already on this machine (`torch.onnx.export`, nothing is
downloaded) the first time it is needed and cached as `<cache>/<name>-<key>.onnx`, where the
key is a hash of everything that shapes the graph: the weight file's bytes, the settings, and
the torch, onnxscript and onnxruntime versions. A second run, every process of a multi-process
run, and predict open the same file. It is written under a temporary name and renamed, so two
processes exporting at once both end up with one complete file.

The cache is `$CRISIS_MM_CACHE/onnx`, else `$XDG_CACHE_HOME/crisis-mm/onnx`, else
`~/.cache/crisis-mm/onnx`. Deleting it costs one export (a few seconds) on the next run.

Why onnxruntime: on a plain 2-core x86 CPU it runs EfficientNet-Lite0 ~4-7x faster than
PyTorch eager (fp32, same vector to ~1e-5; docs/BENCHMARKS.md), and its output does not
depend on the thread count or the batch size (tests/test_onnx.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import EncoderError

log = logging.getLogger(__name__)
CACHE_ENV = "CRISIS_MM_CACHE"
OPSET = 18


def cache_dir() -> Path:
    if root := os.environ.get(CACHE_ENV):
        return Path(root).expanduser() / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crisis-mm" / "onnx"


def versions() -> dict[str, str]:
    """The software that writes and runs a graph: part of its cache key and of the encoder's
    fingerprint (another onnxruntime may give other last bits)."""
    import onnxruntime
    import onnxscript

    return {
        "torch": torch.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": str(OPSET),
    }


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def graph_path(name: str, key: dict[str, Any]) -> Path:
    text = json.dumps({**key, **versions()}, sort_keys=True)
    return cache_dir() / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:20]}.onnx"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export(
    path: Path,
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    inputs: list[str],
    outputs: list[str],
    dynamic: tuple[dict[int, Any], ...],
) -> Path:
    """Write `module`'s graph to `path` unless it is there; atomic (temporary name + rename)."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    log.info("exporting %s to ONNX (once; cached for later runs)", path.name)
    try:
        # The exporter reports each of its passes (stdout, INFO logs) and warns about extras
        # this graph does not use (torchvision ops): nothing a featurize log needs.
        with quiet(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                module.eval(),
                example,
                str(partial),
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                external_data=False,
                verbose=False,
            )
        os.replace(partial, path)
    except Exception as exc:
        raise EncoderError(f"exporting {path.name} to ONNX failed: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return path


def session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session: `threads` threads inside each operator, operators one after
    another; idle threads block instead of spinning (like OMP_WAIT_POLICY=PASSIVE for torch:
    spinning threads starve each other and the DataLoader worker on a shared 2-core machine)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cached_session(path: Path, build: Callable[[], tuple], threads: int) -> Any:
    """Open the cached graph at `path`, exporting it first with `build()` -> export's arguments
    after `path` when it is absent; a cached file that does not load is exported again."""
    if not path.is_file():
        export(path, *build())
    try:
        return session(path, threads)
    except Exception as exc:  # a damaged cache file (truncated disk, manual edit)
        log.warning("cached graph %s does not load (%s); exporting it again", path, exc)
        path.unlink(missing_ok=True)
        export(path, *build())
        return session(path, threads)


class FeatureMapNet(torch.nn.Module):
    """An image network's feature extractor run by onnxruntime, with EfficientNet's
    `extract_features(pixels) -> [B, C, h, w]` interface, so that code reading the map (the
    explain stage's region attributions) gets the very numbers the features come from."""

    def __init__(self, ort_session: Any) -> None:
        super().__init__()
        self.session = ort_session
        self.input = ort_session.get_inputs()[0].name

    def extract_features(self, pixels: torch.Tensor) -> torch.Tensor:
        feed = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input: feed})[0])

    forward = extract_features
