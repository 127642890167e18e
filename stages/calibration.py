"""Calibrated probabilities: temperature scaling (Guo et al., 2017) and how it is checked.

A responder reads 0.9 as "almost sure". An early-stopped, label-smoothed MLP is not calibrated
(smoothing makes it under-confident, overfitting over-confident), so train fits one temperature
T on validation logits (softmax(logits / T) minimises the validation log loss; the ranking and
every argmax are unchanged) and evaluate measures the expected calibration error before and
after, with the reliability diagram's bins.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import log_loss

BINS = 15  # equal-width confidence bins, the usual choice for ECE
# T is searched in [e^-3, e^3]: beyond that the validation set is saying "no information"
# (or a degenerate model), and a bounded search is deterministic.
LOG_T_BOUNDS = (-3.0, 3.0)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    log_p = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the mean negative log-likelihood of softmax(logits / T)."""
    if len(labels) == 0:
        raise ValueError("temperature scaling needs validation rows")
    labels = np.asarray(labels, np.int64)
    found = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(found.x))


def reliability(proba: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict[str, Any]]:
    """Per non-empty confidence bin (top-class probability): its range, the mean confidence,
    the accuracy of its rows and their count."""
    confidence, pred = proba.max(axis=1), proba.argmax(axis=1)
    # bin k holds (k/bins, (k+1)/bins]; a confidence of exactly 0 cannot occur (>= 1/classes)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    out = []
    for k in range(bins):
        rows = which == k
        if rows.any():
            out.append(
                {
                    "bin_low": round(k / bins, 4),
                    "bin_high": round((k + 1) / bins, 4),
                    "confidence": float(confidence[rows].mean()),
                    "accuracy": float((pred[rows] == labels[rows]).mean()),
                    "count": int(rows.sum()),
                }
            )
    return out


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Sum over bins of (rows in bin / rows) x |accuracy - mean confidence|."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("calibration error of an empty split")
    return float(
        sum(
            b["count"] * abs(b["accuracy"] - b["confidence"])
            for b in reliability(proba, labels, bins)
        )
        / len(labels)
    )


def calibration_metrics(y_true: np.ndarray, proba: np.ndarray, raw: np.ndarray) -> dict[str, float]:
    """Expected calibration error of the shipped (temperature-scaled) probabilities and of the
    raw softmax, and the log loss of the raw softmax (the shipped one is `log_loss`)."""
    labels = list(range(proba.shape[1]))
    return {
        "ece": expected_calibration_error(proba, y_true),
        "ece_uncalibrated": expected_calibration_error(raw, y_true),
        "log_loss_uncalibrated": float(log_loss(y_true, raw, labels=labels)),
    }
