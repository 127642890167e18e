"""The typed config: each stage's dataclass builds from the shipped params.yaml, every key in
params.yaml is declared by some stage's config (and every declared key is in params.yaml), and
bad values fail with a message naming the key and what is allowed."""

from __future__ import annotations

import copy
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages import config
from stages.params import ParamsError

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGES = [config.PrepareStage, config.FeaturizeStage, config.TrainStage, config.ExplainStage]
# Keys no stage reads: the small-data and defaults benchmarks use them (bench/).
READ_BY_BENCH = {"class_descriptions"}


def declared(cls: Any, prefix: str = "") -> set[str]:
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        keys.add(key)
        if is_dataclass(hints[f.name]):
            keys |= declared(hints[f.name], key + ".")
    return keys


def present(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in node.items():
        keys.add(f"{prefix}{name}")
        if isinstance(value, dict) and name not in OPAQUE:
            keys |= present(value, f"{prefix}{name}.")
    return keys


# Mappings whose keys are data (class names, per-backend free text), not settings.
OPAQUE = {"manual_weights", "class_descriptions", "label_map"}


@pytest.mark.parametrize("cls", STAGES, ids=lambda c: c.__name__)
def test_shipped_params_build(cls: Any) -> None:
    built = config.load(cls, ROOT / "params.yaml")
    assert is_dataclass(built)


def test_every_key_is_declared_once_and_present() -> None:
    """A key in params.yaml that no stage declares is read nowhere (a typo, or dead); a key
    declared but absent would fail the stage. Views (a stage reading another's keys) count
    as the same key."""
    declared_keys = set().union(*(declared(cls) for cls in STAGES))
    assert declared_keys <= present(PARAMS)
    assert present(PARAMS) - declared_keys == READ_BY_BENCH


def test_the_key_census_can_fail() -> None:
    assert present({"train": {"lr": 1, "typo_key": 2}}) - declared(config.TrainStage) == {
        "train.typo_key"
    }


def _with(change: dict[str, Any]) -> dict[str, Any]:
    params = copy.deepcopy(PARAMS)
    for dotted, value in change.items():
        node = params
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return params


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"prepare.balance": "upsample"},
            "prepare.balance='upsample' is not one of downsample, none",
        ),
        ({"prepare.test_size": 1.0}, "prepare.test_size=1.0 must be in (0, 1)"),
        ({"prepare.test_size": "0.2"}, "prepare.test_size='0.2' must be float"),
        ({"prepare.seed": True}, "prepare.seed=True must be int"),
        ({"prepare.strip_urls": "yes"}, "prepare.strip_urls='yes' must be true or false"),
        ({"prepare.max_side": KeyError}, "missing key 'prepare.max_side'"),
        ({"prepare.max_sidee": 3}, "unknown key(s) prepare.max_sidee; prepare takes seed"),
        ({"prepare.test_events": "sandy"}, "prepare.test_events must be a list"),
        ({"classes": ["a", "a"]}, "distinct"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_with(change)))
    with pytest.raises(ParamsError) as caught:
        config.load(config.PrepareStage, path)
    assert message in str(caught.value)


def test_a_stage_ignores_sections_it_does_not_read(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_with({"train.lr": "fast"})))
    assert config.load(config.PrepareStage, path).prepare.seed == PARAMS["prepare"]["seed"]
