"""Bootstrap intervals for the evaluate stage's headline figures.

A test split of a few hundred posts moves accuracy by several points between two equally good
models (another CPU's last bits, another seed), so each figure comes with the spread it would
have over resampled test sets: posts drawn with replacement, `RESAMPLES` times, seeded; the
percentile interval of the statistic over the resamples.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000
SEED = 20240611
LEVEL = 0.95
# Resamples per vectorised chunk: bounds the index matrix to CHUNK x rows int64s.
CHUNK = 100


def confusion_stack(
    y_true: np.ndarray, pred: np.ndarray, n_classes: int, rows: np.ndarray
) -> np.ndarray:
    """[resamples, true, predicted] counts, one confusion matrix per row of `rows` (indices)."""
    cells = y_true[rows] * n_classes + pred[rows]
    cells = cells + (np.arange(len(rows)) * n_classes * n_classes)[:, None]
    counts = np.bincount(cells.ravel(), minlength=len(rows) * n_classes * n_classes)
    return counts.reshape(len(rows), n_classes, n_classes)


def scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 (every class counts, F1 0 where undefined, as evaluate's
    scikit-learn figures with zero_division=0) of a stack of confusion matrices."""
    tp = np.diagonal(confusion, axis1=1, axis2=2).astype(float)
    total = confusion.sum(axis=(1, 2))
    denominator = confusion.sum(axis=1) + confusion.sum(axis=2)  # 2tp + fn + fp
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return {"accuracy": tp.sum(axis=1) / np.maximum(total, 1), "macro_f1": f1.mean(axis=1)}


def intervals(
    y_true: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, float]:
    """`<metric>_ci95_lo` / `_hi` for accuracy and macro-F1: flat keys, because
    `dvc metrics show/diff` drop lists."""
    y_true, pred = np.asarray(y_true, np.int64), np.asarray(pred, np.int64)
    n = len(y_true)
    if n == 0:
        raise ValueError("bootstrap interval of an empty split")
    rng = np.random.default_rng(seed)
    stats: dict[str, list[np.ndarray]] = {"accuracy": [], "macro_f1": []}
    for start in range(0, resamples, CHUNK):
        rows = rng.integers(0, n, size=(min(CHUNK, resamples - start), n))
        for key, values in scores(confusion_stack(y_true, pred, n_classes, rows)).items():
            stats[key].append(values)
    tag = f"ci{round(level * 100)}"
    out = {}
    for key, parts in stats.items():
        lo, hi = np.quantile(np.concatenate(parts), [(1 - level) / 2, (1 + level) / 2])
        out[f"{key}_{tag}_lo"], out[f"{key}_{tag}_hi"] = float(lo), float(hi)
    return out
