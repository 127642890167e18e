"""Calibration: temperature scaling recovers a known temperature and lowers the calibration
error of over-confident probabilities; ECE and the reliability bins match hand counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax

from stages import calibration
from stages.model import FusionMLP, predict_proba


def sampled(temperature: float, n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from softmax(logits / temperature): that T calibrates them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, 4))
    p = softmax(logits / temperature, axis=1)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fitted_temperature_recovers_the_true_one(true_t: float) -> None:
    logits, labels = sampled(true_t)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.06)


def test_scaling_lowers_the_error_of_over_confident_probabilities() -> None:
    logits, labels = sampled(2.5)  # the raw softmax is over-confident
    raw = softmax(logits, axis=1)
    fitted = calibration.fit_temperature(logits, labels)
    scaled = softmax(logits / fitted, axis=1)
    before = calibration.expected_calibration_error(raw, labels)
    after = calibration.expected_calibration_error(scaled, labels)
    assert before > 0.1 and after < 0.02  # negative control: the raw error is large
    assert calibration.nll(logits, labels, fitted) < calibration.nll(logits, labels)
    assert (scaled.argmax(axis=1) == raw.argmax(axis=1)).all()  # decisions unchanged


def test_ece_and_reliability_bins_match_hand_counts() -> None:
    proba = np.array([[0.9, 0.1], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    bins = calibration.reliability(proba, labels, bins=10)
    # confidences 0.9, 0.95 (bins 9 and 10 of 10: (0.8, 0.9], (0.9, 1.0]), 0.6, 0.7
    assert [(b["bin_high"], b["count"], b["accuracy"]) for b in bins] == [
        (0.6, 1, 1.0),
        (0.7, 1, 1.0),
        (0.9, 1, 1.0),
        (1.0, 1, 0.0),
    ]
    expected = (abs(1 - 0.6) + abs(1 - 0.7) + abs(1 - 0.9) + abs(0 - 0.95)) / 4
    assert calibration.expected_calibration_error(proba, labels, bins=10) == pytest.approx(expected)


def test_predict_proba_divides_by_the_modules_temperature() -> None:
    torch.manual_seed(0)
    module = FusionMLP({"text": 6, "image": 4}, 3, "both", "concat", [8, 8], 0.0)
    text, image = torch.randn(20, 6), torch.randn(20, 4)
    raw = predict_proba(module, text, image)
    module.temperature.fill_(2.0)
    hot = predict_proba(module, text, image)
    np.testing.assert_allclose(predict_proba(module, text, image, calibrated=False), raw)
    with torch.no_grad():
        np.testing.assert_allclose(
            hot, torch.softmax(module(text, image).double() / 2, 1), atol=1e-7
        )
    assert (hot.max(axis=1) < raw.max(axis=1)).all()
    assert (hot.argmax(axis=1) == raw.argmax(axis=1)).all()
