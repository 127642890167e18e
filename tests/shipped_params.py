"""Typed configs for tests: the shipped params.yaml section with a test's overrides merged in,
built and validated the way the stages build theirs (stages/config.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from stages import config

PARAMS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = (
            merged(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def featurize_cfg(over: dict[str, Any] | None = None) -> config.FeaturizeConfig:
    return config.featurize_config(merged(PARAMS["featurize"], over or {}))
