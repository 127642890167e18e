"""BLIP-2 (`Salesforce/blip2-opt-2.7b-coco` by default), frozen, through transformers' Blip2Model.

- image: the ViT's last hidden states go through the Q-Former with its learned query tokens
  (as `Blip2Model.get_qformer_features` does); the vector is the mean of the Q-Former's last
  hidden state over the query tokens: `qformer.hidden_size`-d (768 for blip2-opt-2.7b). This is
  the image representation BLIP-2 was pre-trained to extract; the language projection after
  it is a linear map that adds nothing a downstream MLP cannot learn.
- text: the OPT decoder's last hidden state (`language_model.base_model`, no image tokens),
  mean over real tokens by the attention mask (BOS included, padding excluded):
  `text_config.hidden_size`-d (2560 for OPT-2.7b).

fp16 on CUDA/MPS, fp32 on CPU; the Q-Former stays fp32 as transformers keeps it.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from stages.config import FeaturizeConfig

from .base import Encoder, as_float32, fingerprint_files, masked_mean, model_files
from .hf import ProcessorPreprocess, load_pretrained, model_dtype, model_spec, text_max_length


class Blip2Encoder(Encoder):
    name = "blip2"

    def __init__(self, spec: str, device: torch.device) -> None:
        from transformers import Blip2Model, Blip2Processor

        self.model, self.device, self.dtype = spec, device, model_dtype(device)
        self.path, self.net, processor = load_pretrained(
            Blip2Model, Blip2Processor, spec, self.name, "BLIP-2", device
        )
        self.tokenizer = processor.tokenizer
        self.preprocess = ProcessorPreprocess(processor.image_processor)
        config = self.net.config
        self.image_dim = config.qformer_config.hidden_size
        self.text_dim = config.text_config.hidden_size
        self.max_length = text_max_length(self.tokenizer, config.text_config)

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            patches = self.net.vision_model(
                pixel_values=pixels.to(self.device, self.dtype)
            ).last_hidden_state
            queries = self.net.query_tokens
            patches = patches.to(queries.dtype)
            out = self.net.qformer(
                query_embeds=queries.expand(patches.shape[0], -1, -1),
                encoder_hidden_states=patches,
                encoder_attention_mask=torch.ones(
                    patches.shape[:-1], dtype=torch.long, device=self.device
                ),
            ).last_hidden_state
        return as_float32(out.float().mean(dim=1))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.text_dim), np.float32)
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.net.language_model.base_model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
        return as_float32(masked_mean(hidden.float(), batch["attention_mask"]))

    @cache  # noqa: B019  (one encoder per process: nothing to leak)
    def fingerprint(self) -> str:
        settings = {
            "encoder": self.name,
            "dtype": str(self.dtype),
            "pooling": "qformer-mean/mask-mean",
        }
        return fingerprint_files(model_files(self.path), settings)


def load(name: str, cfg: FeaturizeConfig, device: torch.device) -> Encoder:
    return Blip2Encoder(model_spec(cfg, name), device)
