"""Typed, validated configuration: one frozen dataclass per params.yaml section, and one per
stage that gathers the sections the stage reads (the same ones its `params:` list in dvc.yaml
names), built once from params.yaml.

Every key is declared here once, with its type, its allowed values or range (field metadata)
and a comment saying what it does; params.yaml gives every value (no key has a silent default
in code). A missing key, an unknown key, a wrong type or a value out of range is an error
naming the key and what is allowed.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from stages.params import ParamsError, load_params

T = TypeVar("T")


def bounded(
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> Any:
    """A field whose number must lie in [low, high] (or open at an end)."""
    return field(metadata={"low": low, "high": high, "open_low": open_low, "open_high": open_high})


def build(cls: type[T], node: Any, where: str = "") -> T:
    """`cls` from a params mapping; `where` is the dotted key of `node` (for messages)."""
    label = where or "params.yaml (top level)"
    if not isinstance(node, dict):
        raise ParamsError(f"params.yaml: {label} must be a mapping, got {node!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    # A view reads some keys of a section another stage owns (DVC tracks just those keys).
    if not getattr(cls, "view", False) and (unknown := sorted(set(map(str, node)) - set(known))):
        raise ParamsError(
            f"params.yaml: unknown key(s) {', '.join(_join(where, u) for u in unknown)}"
            f"; {label} takes {', '.join(known)}"
        )
    values = {}
    for spec in fields(cls):  # type: ignore[arg-type]
        key = _join(where, spec.name)
        if spec.name not in node:
            if spec.default is not MISSING:
                values[spec.name] = spec.default
                continue
            raise ParamsError(f"params.yaml: missing key '{key}'")
        values[spec.name] = _convert(hints[spec.name], node[spec.name], key, spec.metadata)
    return cls(**values)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _convert(kind: Any, value: Any, key: str, meta: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if is_dataclass(kind):
        return build(kind, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, key, meta)
    if origin is Literal:
        if value not in args:
            raise ParamsError(
                f"params.yaml: {key}={value!r} is not one of {', '.join(map(str, args))}"
            )
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"params.yaml: {key} must be a list, got {value!r}")
        return tuple(_convert(args[0], item, f"{key}[{i}]", meta) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"params.yaml: {key} must be a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{key}.{k}", meta) for k, v in value.items()}
    if kind is Any:
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"params.yaml: {key}={value!r} must be true or false")
        return value
    if kind in (int, float):
        # bool is an int to Python, never to a user; an int is a fine float, not vice versa
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise ParamsError(f"params.yaml: {key}={value!r} must be {kind.__name__}")
        _check_range(kind(value), key, meta)
        return kind(value)
    if kind is str:
        if not isinstance(value, str) or not value.strip():
            raise ParamsError(f"params.yaml: {key}={value!r} must be a non-empty string")
        return value
    raise TypeError(f"config: no conversion for {kind!r} ({key})")  # a bug here, not in params


def _check_range(value: float, key: str, meta: Any) -> None:
    low, high = meta.get("low"), meta.get("high")
    bad_low = low is not None and (value <= low if meta.get("open_low") else value < low)
    bad_high = high is not None and (value >= high if meta.get("open_high") else value > high)
    if bad_low or bad_high:
        left = "(" if meta.get("open_low") else "["
        right = ")" if meta.get("open_high") else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ParamsError(f"params.yaml: {key}={value!r} must be in {span}")


def load(cls: type[T], path: Path = Path("params.yaml")) -> T:
    """A stage's config from params.yaml: only the sections `cls` declares are read, so a
    stage is not stopped by a problem in a section it does not use (as DVC does not re-run it
    when one changes)."""
    params = load_params(path)
    wanted = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return build(cls, {k: v for k, v in params.items() if k in wanted})


# --- top level -------------------------------------------------------------------------


def check_classes(classes: tuple[str, ...]) -> tuple[str, ...]:
    if not classes or len(set(classes)) != len(classes):
        raise ParamsError(
            f"params.yaml: classes must be a list of distinct names, got {list(classes)!r}"
        )
    return classes


# --- prepare ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    # Each source: {name, path, format, image_root, label_map, label_column, split}, checked
    # by stages.sources.parse_sources, which owns those keys and their defaults per format.
    sources: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class PrepareConfig:
    seed: int = bounded(0, 2**32 - 1)
    strip_urls: bool = field()
    dummy_size: int = bounded(1, 100_000)  # side of the white dummy image, px
    max_side: int = bounded(16, 100_000)  # longest side after normalisation, px
    test_size: float = bounded(0, 1, open_low=True, open_high=True)
    val_size: float = bounded(0, 1, open_low=True, open_high=True)
    near_duplicate_bits: int = bounded(-1, 255)  # -1: near-duplicate images not grouped
    min_shared_words: int = bounded(1)
    group_by: Literal["content", "event"] = field()
    test_events: tuple[str, ...] = field()
    split_leaks: Literal["drop", "keep"] = field()
    balance: Literal["downsample", "none"] = field()
    per_class_small: int = bounded(1)


@dataclass(frozen=True)
class PrepareStage:
    classes: tuple[str, ...]
    data: DataConfig
    prepare: PrepareConfig

    def __post_init__(self) -> None:
        check_classes(self.classes)


# --- featurize -------------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineConfig:
    image_size: int = bounded(32, 1024)  # EfficientNet-Lite0 input side, px
    runtime: Literal["onnx", "torch"] = field()
    bf16: bool = field()  # torch runtime only: bf16 autocast

    def __post_init__(self) -> None:
        if self.bf16 and self.runtime != "torch":
            raise ParamsError(
                "params.yaml: featurize.offline.bf16: true needs "
                "featurize.offline.runtime: torch (the ONNX graphs run in fp32)"
            )


@dataclass(frozen=True)
class ModelConfig:
    model: str  # hub id (from the HF cache) or a local path


@dataclass(frozen=True)
class FeaturizeConfig:
    encoder: Literal["offline", "blip2", "clip", "siglip"] = field()
    batch_size: int = bounded(1)  # images per forward pass
    text_batch_size: int = bounded(1)  # texts per forward pass
    num_workers: int = bounded(0, 64)  # DataLoader processes decoding images
    shard_size: int = bounded(1)  # distinct inputs per resumable shard
    offline: OfflineConfig = field()
    blip2: ModelConfig = field()
    clip: ModelConfig = field()
    siglip: ModelConfig = field()


@dataclass(frozen=True)
class FeaturizeStage:
    featurize: FeaturizeConfig


def featurize_config(node: dict[str, Any]) -> FeaturizeConfig:
    """A FeaturizeConfig from a `featurize:` mapping (tests and benchmarks build their own)."""
    return build(FeaturizeConfig, node, "featurize")


# --- explain ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainConfig:
    method: Literal["auto", "integrated_gradients", "occlusion"] = field()
    n_posts: int = bounded(1)  # test posts explained and scored
    steps: int = bounded(1)  # integration steps
    k: tuple[int, ...] = bounded(1)  # words / regions removed or kept
    random_draws: int = bounded(1)  # seeded random-k draws: the baseline
    bootstrap: int = bounded(1)  # resamples for the 95% intervals
    page_posts: int = bounded(0)  # posts shown on reports/explain/index.html
    seed: int = bounded(0, 2**32 - 1)

    def __post_init__(self) -> None:
        if not self.k:
            raise ParamsError("params.yaml: explain.k must list at least one k value >= 1")


@dataclass(frozen=True)
class DummyView:
    """The one prepare setting explain needs: which picture is the white dummy."""

    view: ClassVar[bool] = True
    dummy_size: int = bounded(1, 100_000)


@dataclass(frozen=True)
class ExplainStage:
    explain: ExplainConfig
    featurize: FeaturizeConfig
    prepare: DummyView


# --- train -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    seed: int = bounded(0, 2**32 - 1)
    fusion: Literal["gated", "concat"] = field()
    hidden: tuple[int, ...] = bounded(1)  # widths of the two hidden layers
    dropout: float = bounded(0, 1, open_high=True)
    lr: float = bounded(0, open_low=True)
    weight_decay: float = bounded(0)
    label_smoothing: float = bounded(0, 1, open_high=True)
    epochs: int = bounded(1)
    batch_size: int = bounded(1)
    patience: int = bounded(1)  # epochs without a better val macro-F1
    auto_weight_power: float = bounded(0, 1)  # weights=auto: inverse frequency ** this
    cv_folds: int = bounded(0)  # >= 2: k-fold CV on train+val picks the epochs
    cv_max_rows: int = bounded(0)  # ...when train+val has at most this many rows
    cv_model: Literal["refit", "ensemble"] = field()  # after CV: one refit, or the k fold models

    def __post_init__(self) -> None:
        if self.cv_folds == 1:
            raise ParamsError("params.yaml: train.cv_folds=1 must be 0 (off) or >= 2")


@dataclass(frozen=True)
class GroupingView:
    """prepare's grouping relations, which cross-validation folds keep whole too."""

    view: ClassVar[bool] = True
    near_duplicate_bits: int = bounded(-1, 255)
    min_shared_words: int = bounded(1)


@dataclass(frozen=True)
class TrainStage:
    weights: Literal["auto", "manual", "none"] = field()
    manual_weights: dict[str, float] = field()  # checked against the classes by train
    modality: Literal["both", "text", "image"] = field()
    train: TrainConfig = field()
    prepare: GroupingView = field()
