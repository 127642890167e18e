"""The training loss: per-class weights from params (`weights`: auto | manual | none) and a
label-smoothed cross-entropy that applies them per row."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight

from stages.params import ParamsError

WEIGHT_MODES = ("auto", "manual", "none")


def class_weights(
    mode: str,
    labels: np.ndarray,
    classes: list[str],
    manual: dict[str, Any] | None = None,
    power: float = 1.0,
) -> np.ndarray:
    """Loss weight per class: auto = inverse frequency ("balanced") raised to `power`
    (1: fully balanced, 0.5: square root, which tempers a weight of ~100 for a class of 21
    rows to ~10), manual = given, none = 1."""
    if mode == "none":
        return np.ones(len(classes))
    if mode == "auto":
        missing = sorted(set(range(len(classes))) - set(np.unique(labels).tolist()))
        if missing:
            raise ValueError(
                "weights=auto: no training rows for "
                f"{[classes[i] for i in missing]}; inverse frequency is undefined"
            )
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 <= power <= 1:
            raise ParamsError(
                f"params.yaml: train.auto_weight_power={power!r} must be a number in [0, 1]"
            )
        return compute_class_weight("balanced", classes=np.arange(len(classes)), y=labels) ** float(
            power
        )
    if mode == "manual":
        manual = manual or {}
        unknown = sorted(set(manual) - set(classes))
        missing = [c for c in classes if c not in manual]
        if unknown or missing:
            raise ParamsError(
                f"params.yaml: manual_weights must give exactly the classes "
                f"{classes}; missing {missing}, unknown {unknown}"
            )
        bad = {
            c: v
            for c, v in manual.items()
            if isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not np.isfinite(v)
            or v <= 0
        }
        if bad:
            raise ParamsError(f"params.yaml: manual_weights must be positive numbers: {bad}")
        return np.array([float(manual[c]) for c in classes])
    raise ParamsError(f"params.yaml: weights={mode!r} is not one of {', '.join(WEIGHT_MODES)}")


class WeightedSmoothedCE(torch.nn.Module):
    """Cross-entropy with label smoothing where each row counts with the weight of its own
    class (weighted mean, as `nn.CrossEntropyLoss(weight=...)`; equal to it at smoothing 0).

    torch's built-in combination weights the smoothing term of every row by *every* class's
    weight, so a rare class with weight ~100 (weights=auto on crisis4) pulls all rows towards
    itself and the model predicts nothing else.
    """

    def __init__(self, weight: torch.Tensor, smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {smoothing}")
        self.register_buffer("weight", weight)
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(logits, dim=1)
        per_row = -log_p.gather(1, target[:, None]).squeeze(1) * (1.0 - self.smoothing)
        per_row = per_row - log_p.mean(dim=1) * self.smoothing
        w = self.weight[target]
        return (w * per_row).sum() / w.sum()
