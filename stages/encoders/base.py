"""The encoder interface shared by featurize and predict, and the helpers its backends share.

An encoder turns texts and images into fixed-size float32 vectors with a frozen model.
Images go through two steps so that decoding can run in DataLoader workers while the model
runs: `preprocess(PIL RGB image) -> tensor` (picklable, no model state) and
`encode_images(stacked tensors) -> array`. One post at a time (predict) is the same calls
with lists and batches of one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from stages.config import FeaturizeConfig, featurize_config

# Backend name -> module in this package, which defines `load(name, params, device) -> Encoder`.
BACKENDS = {"offline": "offline", "blip2": "blip2", "clip": "clip", "siglip": "clip"}


class EncoderError(RuntimeError):
    """The encoder cannot be built as configured (unknown name, weights not available...)."""


class Encoder(ABC):
    name: str  # backend name, as in params.yaml featurize.encoder
    model: str  # what was loaded: model id or path, as configured
    text_dim: int
    image_dim: int
    device: torch.device
    # Runs in DataLoader workers on one PIL RGB image; returns a [C, H, W] float tensor.
    preprocess: Callable[[Image.Image], torch.Tensor]

    @abstractmethod
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), text_dim], one forward pass (the caller sizes the batch)."""

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """float32 [B, image_dim] from a batch of `preprocess` outputs stacked on dim 0."""

    def text_lengths(self, texts: list[str]) -> list[int]:
        """How long each text is for the model, to batch texts of similar length together
        (padding is wasted work): characters here, tokens where a backend can count them."""
        return [len(text) for text in texts]

    @abstractmethod
    def fingerprint(self) -> str:
        """Hex digest naming the embedding function: weight files plus extraction settings."""


def load_encoder(
    cfg: FeaturizeConfig | Mapping[str, Any], device: torch.device | None = None
) -> Encoder:
    """Build the encoder named by `featurize.encoder`, on `device` (default: best available).
    A plain `featurize:` mapping (benchmarks, other revisions' scripts) is validated first."""
    cfg = featurize_config(dict(cfg)) if isinstance(cfg, Mapping) else cfg
    module = importlib.import_module(f"{__package__}.{BACKENDS[cfg.encoder]}")
    return module.load(cfg.encoder, cfg, device or default_device())


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_rgb(path: Path) -> Image.Image:
    """Open an image file as RGB, with an error that names the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise EncoderError(f"{path}: cannot read image ({exc})") from exc


class ImageFiles(Dataset):
    """Image files through an encoder's `preprocess`, for DataLoader workers."""

    def __init__(self, paths: list[str], preprocess: Callable[[Image.Image], torch.Tensor]):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(load_rgb(Path(self.paths[i])))


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the sequence of `hidden` [B, T, D], counting only positions where mask is 1,
    so padding never changes a text's vector."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def as_float32(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()


def fingerprint_files(files: dict[str, Path], settings: dict[str, Any]) -> str:
    """sha256 over the extraction settings and each file's label and bytes, in label order."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for label in sorted(files):
        digest.update(label.encode() + b"\0")
        with files[label].open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def model_files(directory: Path) -> dict[str, Path]:
    """Every file of a saved model (weights, configs, tokenizer) by relative path; docs and
    hidden files aside, since they never change a vector."""
    found = {}
    for path in directory.rglob("*"):
        rel = path.relative_to(directory)
        if (
            path.is_file()
            and path.name != "README.md"
            and not any(part.startswith(".") for part in rel.parts)
        ):
            found[rel.as_posix()] = path
    return found


def resolve_pretrained(spec: str, backend: str, params_key: str) -> Path:
    """A local directory holding `spec`: the directory itself, or its snapshot in the HF cache.

    Never downloads. When the weights are not here, the error says which model is missing and
    the two ways to provide it; no other encoder is used in its place.
    """
    local = Path(spec).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except Exception as exc:  # the hub client raises several types for "not in the cache"
        raise EncoderError(
            f"{backend} weights '{spec}' ({params_key} in params.yaml) are not available on this "
            f"machine: no directory '{local}' and no copy in the Hugging Face cache "
            f"({HF_HUB_CACHE}). Nothing is downloaded. Provide them either way: "
            f"(1) on a machine with internet run `hf download {spec}` and copy its cache folder "
            f"here (HF_HOME / HF_HUB_CACHE), or (2) save the model with `save_pretrained` into "
            f"a directory and set `{params_key}: /path/to/that/directory`. "
            f"Or choose another encoder explicitly with featurize.encoder."
        ) from exc
