"""Bootstrap intervals: the resampled scores equal scikit-learn's on each resample, the
interval is seeded, brackets the estimate, and has the width binomial theory predicts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from stages import bootstrap


def test_resampled_scores_equal_scikit_learn_on_each_resample() -> None:
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    pred[:3] = 3  # class 3 over-predicted; some resamples lack a class entirely
    rows = rng.integers(0, 50, size=(20, 50))
    got = bootstrap.scores(bootstrap.confusion_stack(y, pred, 4, rows))
    for k, r in enumerate(rows):
        assert got["accuracy"][k] == pytest.approx(accuracy_score(y[r], pred[r]))
        assert got["macro_f1"][k] == pytest.approx(
            f1_score(y[r], pred[r], labels=range(4), average="macro", zero_division=0)
        )


def test_interval_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, 3, 200))
    first, again = (bootstrap.intervals(y, pred, 3) for _ in range(2))
    assert first == again
    assert bootstrap.intervals(y, pred, 3, seed=5) != first
    acc = (y == pred).mean()
    assert first["accuracy_ci95_lo"] < acc < first["accuracy_ci95_hi"]
    f1 = f1_score(y, pred, average="macro")
    assert first["macro_f1_ci95_lo"] < f1 < first["macro_f1_ci95_hi"]


@pytest.mark.parametrize("n", [100, 2000])
def test_accuracy_interval_has_the_binomial_width(n: int) -> None:
    y = np.zeros(n, np.int64)
    pred = np.where(np.arange(n) < 0.8 * n, 0, 1)  # accuracy exactly 0.8
    ci = bootstrap.intervals(y, pred, 2)
    expected = 2 * 1.96 * np.sqrt(0.8 * 0.2 / n)
    assert ci["accuracy_ci95_hi"] - ci["accuracy_ci95_lo"] == pytest.approx(expected, rel=0.2)


def test_a_perfect_classifier_has_a_point_interval_and_empty_input_is_refused() -> None:
    y = np.arange(40) % 4
    assert bootstrap.intervals(y, y, 4) == {
        "accuracy_ci95_lo": 1.0,
        "accuracy_ci95_hi": 1.0,
        "macro_f1_ci95_lo": 1.0,
        "macro_f1_ci95_hi": 1.0,
    }
    with pytest.raises(ValueError, match="empty"):
        bootstrap.intervals(y[:0], y[:0], 4)
