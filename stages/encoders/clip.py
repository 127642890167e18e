"""CLIP and SigLIP, frozen: each model's own image and text embeddings, from transformers.

- clip (`CLIPModel`): `get_image_features` / `get_text_features`, i.e. the pooled output of
  each tower (class token / end-of-text token) through its projection: `projection_dim`-d
  (512 for clip-vit-base-patch32). Text padded to the longest in the batch; the end-of-text
  pooling ignores padding.
- siglip (`SiglipModel`): the same two calls: attention-pooled image head (vision
  `hidden_size`-d) and the text head on the last token (`projection_size`-d), 768 and 768 for
  siglip-base-patch16-224. Text is padded to `max_position_embeddings` (64), as SigLIP was
  trained: its text vector is read at the last position, so the padding is part of the input.

No L2 normalisation (the classifier standardises its inputs). fp16 on CUDA/MPS, fp32 on CPU.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from stages.config import FeaturizeConfig

from .base import Encoder, as_float32, fingerprint_files, model_files
from .hf import (
    ProcessorPreprocess,
    load_pretrained,
    model_dtype,
    model_spec,
    pooled,
    text_max_length,
)

LABELS = {"clip": "CLIP", "siglip": "SigLIP"}


class DualTowerEncoder(Encoder):
    def __init__(self, name: str, spec: str, device: torch.device) -> None:
        from transformers import AutoProcessor, CLIPModel, SiglipModel

        model_cls = {"clip": CLIPModel, "siglip": SiglipModel}[name]
        self.name, self.model, self.device, self.dtype = name, spec, device, model_dtype(device)
        self.path, self.net, processor = load_pretrained(
            model_cls, AutoProcessor, spec, name, LABELS[name], device
        )
        self.tokenizer = processor.tokenizer
        self.preprocess = ProcessorPreprocess(processor.image_processor)
        config = self.net.config
        self.max_length = text_max_length(self.tokenizer, config.text_config)
        self.padding = "max_length" if name == "siglip" else True
        if name == "clip":
            self.text_dim = self.image_dim = config.projection_dim
        else:
            self.text_dim = (
                getattr(config.text_config, "projection_size", None)
                or config.text_config.hidden_size
            )
            self.image_dim = config.vision_config.hidden_size

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            out = self.net.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        return as_float32(pooled(out))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.text_dim), np.float32)
        batch = self.tokenizer(
            texts,
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        # SigLIP was trained without an attention mask (all positions, padding included).
        mask = batch.get("attention_mask") if self.name == "clip" else None
        with torch.inference_mode():
            out = self.net.get_text_features(input_ids=batch["input_ids"], attention_mask=mask)
        return as_float32(pooled(out))

    @cache  # noqa: B019  (one encoder per process: nothing to leak)
    def fingerprint(self) -> str:
        settings = {"encoder": self.name, "dtype": str(self.dtype), "padding": str(self.padding)}
        return fingerprint_files(model_files(self.path), settings)


def load(name: str, cfg: FeaturizeConfig, device: torch.device) -> Encoder:
    return DualTowerEncoder(name, model_spec(cfg, name), device)
