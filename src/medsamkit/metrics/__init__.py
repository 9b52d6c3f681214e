"""Segmentation metrics on numpy arrays: overlap (Dice, IoU), surface (HD95, NSD), instance (AJI, GlaS).

Every metric takes the prediction first and the truth second, named ``pred`` and ``truth`` (MONAI's
order). Definitions follow docs/protocols.md "Metrics"; every function documents its empty-mask
convention, and ``MetricAccumulator`` counts the both-empty cases behind a mean so reports can state them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from medsamkit.metrics.instance import aji, object_dice, object_f1, object_f1_counts, object_hausdorff
from medsamkit.metrics.overlap import confusion, dice, iou
from medsamkit.metrics.surface import (
    HD95_CONVENTION,
    NSD_CONVENTIONS,
    hd95,
    nsd,
    surface_dice,
    surface_distances,
)

__all__ = [
    "HD95_CONVENTION",
    "NSD_CONVENTIONS",
    "MetricAccumulator",
    "aji",
    "confusion",
    "dice",
    "hd95",
    "iou",
    "nsd",
    "object_dice",
    "object_f1",
    "object_f1_counts",
    "object_hausdorff",
    "surface_dice",
    "surface_distances",
]


@dataclass
class MetricAccumulator:
    """Per-case values of one metric; ``summary()`` gives mean, median, n and the both-empty count.

    Infinite values (e.g. HD95 with one empty mask) are kept: they make the mean inf, which is the
    honest figure; ``n_infinite`` says how many there were.
    """

    values: list[float] = field(default_factory=list)
    n_both_empty: int = 0

    def add(self, value: float, both_empty: bool = False) -> None:
        """Record one case's value; ``both_empty`` marks a case whose value comes from the empty rule."""
        if math.isnan(value):
            raise ValueError("metric value is NaN; every medsamkit metric defines its empty cases")
        self.values.append(float(value))
        self.n_both_empty += int(both_empty)

    def summary(self) -> dict[str, float | int]:
        """``{"mean", "median", "n", "n_both_empty", "n_infinite"}``; mean/median are NaN when n == 0."""
        arr = np.asarray(self.values, dtype=float)
        return {
            "mean": float(arr.mean()) if arr.size else float("nan"),
            "median": float(np.median(arr)) if arr.size else float("nan"),
            "n": int(arr.size),
            "n_both_empty": self.n_both_empty,
            "n_infinite": int(np.isinf(arr).sum()),
        }
