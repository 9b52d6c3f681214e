"""Intensity windows that turn CT Hounsfield units or MR intensities into float32 images in [0, 1].

CT windows are (level, width) in HU: values below ``level - width/2`` map to 0, above ``level + width/2``
to 1, linearly in between (the plain form most deep-learning pipelines use, not DICOM's ``c - 0.5`` /
``w - 1`` variant). Named presets (radiology reading defaults):

================  =====  =====  ==================
name              level  width  HU range
================  =====  =====  ==================
lung              -600   1500   [-1350, 150]
mediastinum         40    400   [-160, 240]
soft_tissue         40    400   [-160, 240]
abdomen             40    400   [-160, 240]
bone               400   1800   [-500, 1300]
brain               40     80   [0, 80]
================  =====  =====  ==================

MR has no absolute scale, so `percentile_clip` normalises between intensity percentiles instead.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from medsamkit.core.errors import InputError


class IntensityWindow(NamedTuple):
    """A CT intensity window in HU: centre ``level`` and full ``width`` (not a tile: that is ``core.objects.Window``)."""

    level: float
    width: float


#: A window as `parse_window` returns it: a preset name, (lo, hi) in HU, or None for the automatic rule.
WindowChoice = str | tuple[float, float] | None

WINDOWS: dict[str, IntensityWindow] = {
    "lung": IntensityWindow(-600.0, 1500.0),
    "mediastinum": IntensityWindow(40.0, 400.0),
    "soft_tissue": IntensityWindow(40.0, 400.0),
    "abdomen": IntensityWindow(40.0, 400.0),
    "bone": IntensityWindow(400.0, 1800.0),
    "brain": IntensityWindow(40.0, 80.0),
}


def range_window(hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly to [0, 1] (clipping outside) as float32, e.g. ``range_window(ct, -1000, 400)``."""
    if not hi > lo:
        raise InputError(f"window upper bound {hi} must be greater than lower bound {lo}")
    values = np.asarray(hu, dtype=np.float32)
    out = (np.clip(values, lo, hi) - np.float32(lo)) / np.float32(hi - lo)
    return out.astype(np.float32, copy=False)


def apply_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to [0, 1] float32 with the window ``level`` +/- ``width / 2``."""
    if not width > 0:
        raise InputError(f"window width must be positive, got {width}")
    return range_window(hu, level - width / 2.0, level + width / 2.0)


def window_by_name(hu: np.ndarray, name: str) -> np.ndarray:
    """Apply a named preset from `WINDOWS` (case-insensitive; '-' or ' ' may stand for '_')."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key not in WINDOWS:
        raise InputError(f"unknown CT window '{name}'; valid names: {', '.join(WINDOWS)}")
    level, width = WINDOWS[key]
    return apply_window(hu, level, width)


def percentile_clip(
    img: np.ndarray, lo: float = 0.5, hi: float = 99.5, mask: np.ndarray | None = None
) -> np.ndarray:
    """Clip to the ``lo``/``hi`` intensity percentiles (within ``mask`` if given) and scale to [0, 1] float32.

    A constant image (both percentiles equal) maps to all zeros.
    """
    if not 0.0 <= lo < hi <= 100.0:
        raise InputError(f"percentiles must satisfy 0 <= lo < hi <= 100, got lo={lo}, hi={hi}")
    values = np.asarray(img, dtype=np.float32)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != values.shape:
            raise InputError(f"mask shape {mask.shape} does not match image shape {values.shape}")
        if not mask.any():
            raise InputError("mask for percentile clipping is empty")
        sample = values[mask]
    else:
        sample = values.ravel()
    if sample.size == 0:
        raise InputError("cannot clip an empty image")
    low, high = np.percentile(sample, [lo, hi])
    if not high > low:
        return np.zeros(values.shape, dtype=np.float32)
    return range_window(values, float(low), float(high))


def parse_window(text: str | None) -> WindowChoice:
    """A ``--window`` value: a preset name (lung, soft_tissue, bone, ...) or ``lo,hi`` in HU; None for auto."""
    if text is None or not str(text).strip():
        return None
    parts = str(text).split(",")
    if len(parts) == 1:
        return parts[0].strip()
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise InputError(f"window {text!r} must be a name (lung, soft_tissue, bone, ...) or lo,hi") from None
    if not hi > lo:
        raise InputError(f"window {text!r}: upper bound must exceed lower bound")
    return lo, hi
