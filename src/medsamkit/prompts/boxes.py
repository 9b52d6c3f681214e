"""Box geometry: boxes are ``[x0, y0, x1, y1]`` with INCLUSIVE pixel maxima (the project's convention), so a box
covers ``(x1 - x0 + 1) * (y1 - y0 + 1)`` pixels; a one-pixel box has area 1."""

from __future__ import annotations

import numpy as np

from medsamkit.core.errors import InputError


def as_boxes(boxes: object, what: str) -> np.ndarray:
    """``boxes`` as float64 (N, 4) rows, or InputError naming ``what`` (wrong shape, a side inverted)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InputError(f"{what} must be (N, 4) [x0, y0, x1, y1] rows, got shape {arr.shape}")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise InputError(f"{what}: a box has x1 < x0 or y1 < y0")
    return arr


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Pixel areas of inclusive boxes (N,4) -> (N,)."""
    b = as_boxes(boxes, "boxes")
    return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)


def box_iou(a: object, b: object) -> np.ndarray:
    """IoU matrix (N, M) between inclusive boxes a (N,4) and b (M,4)."""
    a, b = as_boxes(a, "boxes a"), as_boxes(b, "boxes b")
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0 + 1, 0, None) * np.clip(y1 - y0 + 1, 0, None)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union
