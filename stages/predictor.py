"""Loading what predicting needs, with a clear error for each way it can be missing: the
trained model with the encoder it was trained with (refusing another), and a CSV of posts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from stages import csvsafe
from stages.config import FeaturizeConfig
from stages.encoders import Encoder, load_encoder
from stages.model import INPUT_KEYS, META_FILE, FusionMLP, load_model


class PredictError(ValueError):
    """No trained model, an encoder other than the model's, or an unusable input file."""


def load_predictor(
    cfg: FeaturizeConfig, model_dir: Path
) -> tuple[FusionMLP, dict[str, Any], Encoder]:
    """The trained model, its model.json, and the encoder it was trained with."""
    meta_path = model_dir / META_FILE
    if not meta_path.is_file():
        raise PredictError(
            f"{meta_path} not found: no trained model; run `dvc repro` in the "
            "repository root first (or point --model-dir at a trained model)"
        )
    module, meta = load_model(model_dir)
    recorded = meta.get("input")
    if not isinstance(recorded, dict) or set(recorded) != set(INPUT_KEYS):
        raise PredictError(
            f"{meta_path} does not record the input settings it was trained with "
            f"(an 'input' block with {list(INPUT_KEYS)}); retrain with `dvc repro`"
        )
    trained = (meta.get("encoder"), meta.get("fingerprint"))
    # Another backend is refused before it loads; the same one is built to compare fingerprints.
    encoder = load_encoder(cfg) if cfg.encoder == trained[0] else None
    built = (encoder.name, encoder.fingerprint()) if encoder else (cfg.encoder, "-")
    if built != trained:
        raise PredictError(
            f"encoder mismatch: {meta_path} was trained with {trained[0]!r} "
            f"(fingerprint {str(trained[1])[:12]}), params.yaml's featurize block "
            f"gives {built[0]!r} (fingerprint {built[1][:12]}); restore those "
            "settings or retrain with `dvc repro`"
        )
    return module, meta, encoder


def read_posts(path: Path) -> pd.DataFrame:
    try:  # csvsafe: a CSV this project wrote (dataset/*.csv) reads back exactly
        posts = csvsafe.read_csv(path, int_columns=())
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise PredictError(f"{path}: cannot read it as a UTF-8 CSV ({exc})") from exc
    if missing := [c for c in ("text", "image_path") if c not in posts.columns]:
        raise PredictError(f"{path}: no column {missing} (has {list(posts.columns)})")
    return posts
