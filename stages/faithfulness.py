"""ERASER-style faithfulness of attributions (DeYoung et al., 2020), beside random removal.

For one post with n units (words or image regions), scores s and predicted-class probability
p(full):
- comprehensiveness at k: p(full) - p(the post without its top-k units): high when the
  attributed units were what the model needed;
- sufficiency at k: p(full) - p(only the top-k units kept): low when they alone suffice.
k larger than n is capped at n. The same two numbers for k units drawn at random (`draws`
seeded draws, averaged) are the baseline an attribution has to beat. Each post's figure is
averaged over the k values (AOPC); the summary gives the mean over posts with a percentile
bootstrap interval over posts, for attributed, random and their paired difference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from stages.attribution import Explainer, Explanation, drop_words, word_spans

MODES = ("comprehensiveness", "sufficiency")
SOURCES = ("attributed", "random")


@dataclass(frozen=True)
class Variant:
    mode: str  # comprehensiveness | sufficiency
    source: str  # attributed | random
    k: int
    draw: int  # random draw number (0 for attributed)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores; ties go to the earlier unit (stable)."""
    return np.argsort(-np.asarray(scores, float), kind="stable")[: min(k, len(scores))]


def plan(
    scores: np.ndarray, max_k: int, draws: int, rng: np.random.Generator
) -> tuple[list[Variant], np.ndarray]:
    """Every variant for k = 1..max_k and its keep mask [variants, units] (True = kept)."""
    n = len(scores)
    variants, masks = [], []
    for k in range(1, max_k + 1):
        chosen = [("attributed", 0, top_k(scores, k))]
        chosen += [("random", d, rng.choice(n, min(k, n), replace=False)) for d in range(draws)]
        for source, draw, units in chosen:
            picked = np.zeros(n, bool)
            picked[units] = True
            variants += [
                Variant("comprehensiveness", source, k, draw),
                Variant("sufficiency", source, k, draw),
            ]
            masks += [~picked, picked]
    return variants, np.array(masks, bool).reshape(len(masks), n)


def drops(
    p_full: float, p_variants: np.ndarray, variants: list[Variant]
) -> dict[tuple[str, str, int], float]:
    """(mode, source, k) -> p(full) - p(variant), random draws averaged."""
    sums: dict[tuple[str, str, int], list[float]] = {}
    for v, p in zip(variants, p_variants):
        sums.setdefault((v.mode, v.source, v.k), []).append(p_full - float(p))
    return {key: float(np.mean(vals)) for key, vals in sums.items()}


def evaluate_post(
    scores: np.ndarray,
    p_full: float,
    proba_of: Callable[[np.ndarray], np.ndarray],
    max_k: int,
    draws: int,
    rng: np.random.Generator,
) -> dict[tuple[str, str, int], float]:
    """One post's drops; `proba_of(keep masks)` gives the predicted class's probability."""
    variants, masks = plan(scores, max_k, draws, rng)
    return drops(p_full, proba_of(masks), variants)


def bootstrap(
    values: np.ndarray, n_boot: int, rng: np.random.Generator, level: float = 0.95
) -> dict[str, float]:
    values = np.asarray(values, float)
    if len(values) == 0:
        return {"mean": None, "lo": None, "hi": None}  # type: ignore[dict-item]
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {
        "mean": round(float(values.mean()), 6),
        "lo": round(float(lo), 6),
        "hi": round(float(hi), 6),
    }


def summarise(
    per_post: list[dict[tuple[str, str, int], float]], ks: list[int], n_boot: int, seed: int
) -> dict:
    """Mean over posts of the k-averaged drops, with bootstrap intervals, and per k."""
    out: dict = {"posts": len(per_post)}
    rng = np.random.default_rng(seed)
    for mode in MODES:
        aopc = {
            s: np.array([np.mean([d[mode, s, k] for k in ks]) for d in per_post]) for s in SOURCES
        }
        out[mode] = {
            "attributed": bootstrap(aopc["attributed"], n_boot, rng),
            "random": bootstrap(aopc["random"], n_boot, rng),
            "attributed_minus_random": bootstrap(aopc["attributed"] - aopc["random"], n_boot, rng),
            "per_k": {
                str(k): {
                    s: round(
                        float(np.mean([d[mode, s, k] for d in per_post])) if per_post else 0.0, 6
                    )
                    for s in SOURCES
                }
                for k in ks
            },
        }
    return out


def deletion_curve(
    per_post: list[dict[tuple[str, str, int], float]], max_k: int
) -> list[dict[str, float]]:
    """k -> mean comprehensiveness (probability drop), attributed and random; k = 0 is 0."""
    rows = [{"k": 0, "attributed": 0.0, "random": 0.0}]
    for k in range(1, max_k + 1):
        rows.append(
            {
                "k": k,
                **{
                    s: round(
                        float(np.mean([d["comprehensiveness", s, k] for d in per_post]))
                        if per_post
                        else 0.0,
                        6,
                    )
                    for s in SOURCES
                },
            }
        )
    return rows


def text_proba_of(explainer: Explainer, e: Explanation) -> Callable[[np.ndarray], np.ndarray]:
    """Keep masks over the post's words -> predicted-class probability, words removed by
    deleting them and re-encoding (attribution.drop_words), the image unchanged."""
    spans = word_spans(e.text)

    def proba(masks: np.ndarray) -> np.ndarray:
        vecs = explainer.text_vectors([drop_words(e.text, spans, m) for m in masks])
        return explainer.target_proba(vecs, np.repeat(e.image_vec[None], len(vecs), 0), e.predicted)

    return proba


def image_proba_of(explainer: Explainer, e: Explanation) -> Callable[[np.ndarray], np.ndarray]:
    def proba(masks: np.ndarray) -> np.ndarray:
        vecs = explainer.region_vectors(e.image_view, masks)
        return explainer.target_proba(np.repeat(e.text_vec[None], len(vecs), 0), vecs, e.predicted)

    return proba


def measure(
    explanations: list[Explanation],
    explainer: Explainer,
    ks: list[int],
    draws: int,
    n_boot: int,
    seed: int,
) -> tuple[dict, list[dict]]:
    """Text and image faithfulness over the posts that have words / a used image, and the
    deletion curve rows (k, text_attributed, text_random, image_attributed, image_random)."""
    max_k, report, curves = max(ks), {}, {}
    for modality, units, proba_of in (
        (
            "text",
            lambda e: e.word_scores if e.words and "text" in explainer.uses else None,
            text_proba_of,
        ),
        ("image", lambda e: None if e.regions is None else e.regions.ravel(), image_proba_of),
    ):
        per_post = []
        for i, e in enumerate(explanations):
            scores = units(e)
            if scores is None:
                continue
            # One generator per post and modality: a post's draws never depend on the others.
            rng = np.random.default_rng([seed, i, modality == "image"])
            per_post.append(
                evaluate_post(
                    scores, float(e.proba[e.predicted]), proba_of(explainer, e), max_k, draws, rng
                )
            )
        report[modality] = summarise(per_post, ks, n_boot, seed)
        curves[modality] = deletion_curve(per_post, max_k)
    rows = [
        {
            "k": t["k"],
            "text_attributed": t["attributed"],
            "text_random": t["random"],
            "image_attributed": m["attributed"],
            "image_random": m["random"],
        }
        for t, m in zip(curves["text"], curves["image"])
    ]
    return report, rows


def select_posts(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """All rows when n covers them, else a seeded sample of n, in file order."""
    if n >= len(frame):
        return frame
    rows = np.sort(np.random.default_rng(seed).choice(len(frame), n, replace=False))
    return frame.iloc[rows]


def share_by_class(exps: list[Explanation], classes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, name in enumerate(classes):
        shares = [e.text_share for e in exps if e.predicted == k]
        out[name] = {
            "posts": len(shares),
            "text_share": round(float(np.mean(shares)), 4) if shares else None,
        }
    out["all"] = {
        "posts": len(exps),
        "text_share": round(float(np.mean([e.text_share for e in exps])), 4),
    }
    return out
