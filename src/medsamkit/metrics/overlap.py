"""Binary overlap metrics (Dice, IoU) and the input checks every medsamkit metric shares.

Masks are numpy arrays of any dtype; nonzero means foreground. Both-empty pairs score 1.0.
"""

from __future__ import annotations

import numpy as np

from medsamkit.core.errors import InputError


def checked_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(pred, truth)`` as arrays after checking equal shapes and no NaN/inf in float input."""
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise InputError(f"prediction shape {pred.shape} does not match truth shape {truth.shape}")
    for name, arr in (("prediction", pred), ("truth", truth)):
        if arr.dtype.kind not in "biuf":
            raise InputError(f"{name} has dtype {arr.dtype}; expected a boolean, integer or float array")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InputError(f"{name} contains NaN or infinite values")
    return pred, truth


def confusion(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """Pixel counts ``(tp, fp, fn)`` of a binary prediction against a binary truth (nonzero = foreground)."""
    pred, truth = checked_pair(pred, truth)
    p = pred != 0
    t = truth != 0
    tp = int(np.count_nonzero(p & t))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(t)) - tp


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice = 2|P∩T| / (|P|+|T|); 1.0 when both masks are empty."""
    tp, fp, fn = confusion(pred, truth)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU = |P∩T| / |P∪T|; 1.0 when both masks are empty."""
    tp, fp, fn = confusion(pred, truth)
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom
