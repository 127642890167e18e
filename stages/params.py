"""Reading params.yaml: one loader, so every stage sees the same file the same way."""
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


def require(params: dict[str, Any], dotted: str) -> Any:
    """Value at a dotted key ('train.lr'), with an error naming the key when absent."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"params.yaml: missing key '{dotted}'")
        node = node[part]
    return node


def choice(params: dict[str, Any], dotted: str, allowed: tuple[str, ...]) -> str:
    value = require(params, dotted)
    if value not in allowed:
        raise ParamsError(
            f"params.yaml: {dotted}={value!r} is not one of {', '.join(allowed)}"
        )
    return value
