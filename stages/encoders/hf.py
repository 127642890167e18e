"""What the transformers backends (blip2, clip, siglip) share: precision, preprocessing, loading."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from stages.config import FeaturizeConfig

from .base import EncoderError, resolve_pretrained


def model_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA and MPS (the weights were trained in mixed precision), fp32 on CPU, where
    fp16 matmuls are slow or unsupported."""
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


@dataclass(frozen=True)
class ProcessorPreprocess:
    """The model's own image processor on one PIL image -> [C, H, W]; picklable."""

    image_processor: Any

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.image_processor(images=image.convert("RGB"), return_tensors="pt")[
            "pixel_values"
        ][0]


def model_spec(cfg: FeaturizeConfig, backend: str) -> str:
    return getattr(cfg, backend).model


def load_pretrained(
    model_cls: Any, processor_cls: Any, spec: str, backend: str, label: str, device: torch.device
) -> tuple[Path, Any, Any]:
    """(local dir, frozen model on `device`, processor), from a directory or the HF cache.

    Refuses a checkpoint of another architecture, and one that lacks weights the model needs
    (transformers would initialise them at random, and the features would be noise).
    """
    from transformers import AutoConfig

    path = resolve_pretrained(spec, label, f"featurize.{backend}.model")
    try:
        kind = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        if kind != model_cls.config_class.model_type:
            raise EncoderError(
                f"featurize.{backend}.model='{spec}' is a '{kind}' model, "
                f"not {label} ('{model_cls.config_class.model_type}')"
            )
        model, info = model_cls.from_pretrained(
            path, dtype=model_dtype(device), local_files_only=True, output_loading_info=True
        )
        processor = processor_cls.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EncoderError(f"{label} at '{path}' ({spec}) cannot be loaded: {exc}") from exc
    if info.get("missing_keys"):
        raise EncoderError(
            f"{label} at '{path}' lacks weights {sorted(info['missing_keys'])[:5]}"
            f"... ({len(info['missing_keys'])} missing): not a complete checkpoint"
        )
    model.requires_grad_(False)
    return path, model.to(device).eval(), processor


def pooled(output: Any) -> torch.Tensor:
    """The pooled vector of a get_*_features call: transformers 5 returns a model output with
    `pooler_output`, earlier versions the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def text_max_length(tokenizer: Any, model_config: Any) -> int:
    return int(min(tokenizer.model_max_length, model_config.max_position_embeddings))
