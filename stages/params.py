"""Reading params.yaml: one loader, so every stage sees the same file the same way (stages/config.py
turns its sections into typed configs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """A parameter is missing or has a value the pipeline cannot use."""


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    try:
        with Path(path).open(encoding="utf-8") as fh:
            params = yaml.safe_load(fh)
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: not found (run the stage from the repository root)") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return params
