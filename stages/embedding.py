"""Embedding the distinct texts and images of some posts into resumable shard files: shared by
featurize (every split) and predict (new posts), so new posts take the very same batching.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader
from tqdm import tqdm

from stages.config import FeaturizeConfig, featurize_config
from stages.encoders import Encoder, ImageFiles
from stages.feature_store import Items, collect, file_key, pending_shards, save_shard, text_key

log = logging.getLogger("featurize")


def embed_images(
    items: Items, todo: list, encoder: Encoder, batch: int, workers: int, show: bool
) -> None:
    """Embed the pending image shards; workers decode the next batches meanwhile."""
    batches = [list(span[i : i + batch]) for _, span, _ in todo for i in range(0, len(span), batch)]
    loader = iter(
        DataLoader(
            ImageFiles(items.values, encoder.preprocess), batch_sampler=batches, num_workers=workers
        )
        if batches
        else []
    )
    # disable=None: a bar on a terminal, nothing in logs; only one process draws it.
    with tqdm(
        total=sum(len(s) for _, s, _ in todo),
        unit="img",
        disable=None if show else True,
        desc=f"images ({len(items.values)} distinct)",
    ) as bar:
        for path, span, tag in todo:
            parts: list[np.ndarray] = []
            while sum(map(len, parts)) < len(span):
                parts.append(encoder.encode_images(next(loader)))
                bar.update(len(parts[-1]))
            save_shard(path, np.concatenate(parts), tag)


def embed_texts(items: Items, todo: list, encoder: Encoder, batch: int, show: bool) -> None:
    with tqdm(
        total=sum(len(s) for _, s, _ in todo),
        unit="text",
        disable=None if show else True,
        desc=f"texts ({len(items.values)} distinct)",
    ) as bar:
        for path, span, tag in todo:
            # Length-sorted batches pad less (by tokens where the encoder counts them: by
            # characters, emoji and hashtags left ~2x padding); the order depends on the
            # shard's content only.
            lengths = encoder.text_lengths([items.values[i] for i in span])
            order = [span[k] for k in np.argsort(lengths, kind="stable")]
            out = np.empty((len(span), encoder.text_dim), np.float32)
            for b in range(0, len(order), batch):
                ids = order[b : b + batch]
                out[np.subtract(ids, span.start)] = encoder.encode_text(
                    [items.values[i] for i in ids]
                )
                bar.update(len(ids))
            save_shard(path, out, tag)


def embed(
    frames: dict[str, pd.DataFrame],
    encoder: Encoder,
    cfg: FeaturizeConfig | Mapping[str, Any],
    work_dir: Path,
    rank: int = 0,
    world: int = 1,
) -> tuple[Items, Items]:
    """Embed this process's share of the distinct texts and images into shard files."""
    cfg = featurize_config(dict(cfg)) if isinstance(cfg, Mapping) else cfg
    size, batch, text_batch = cfg.shard_size, cfg.batch_size, cfg.text_batch_size
    # Batch composition can change the last bits of a vector: shards of other sizes don't mix.
    run_key = json.dumps([encoder.fingerprint(), batch, text_batch])
    texts = collect("text", {s: list(f["text"]) for s, f in frames.items()}, text_key)
    images = collect("image", {s: list(f["image"]) for s, f in frames.items()}, file_key)
    image_todo, text_todo = (
        pending_shards(items, size, run_key, work_dir, rank, world) for items in (images, texts)
    )
    log.info(
        "process %d/%d: %d of %d image shards and %d of %d text shards to embed",
        rank + 1,
        world,
        len(image_todo),
        len(images.shards(size)),
        len(text_todo),
        len(texts.shards(size)),
    )
    embed_images(images, image_todo, encoder, batch, cfg.num_workers, rank == 0)
    embed_texts(texts, text_todo, encoder, text_batch, rank == 0)
    return texts, images
