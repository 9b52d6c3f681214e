"""Non-maximum suppression for mask proposals: box IoU, greedy NMS on boxes or on masks (no torchvision).

Boxes are ``[x0, y0, x1, y1]`` with INCLUSIVE pixel maxima (the project's convention), so a box covers
``(x1 - x0 + 1) * (y1 - y0 + 1)`` pixels; a one-pixel box has area 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsamkit.core.errors import InputError


def _as_boxes(boxes: object, what: str) -> np.ndarray:
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
    b = _as_boxes(boxes, "boxes")
    return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)


def box_iou(a: object, b: object) -> np.ndarray:
    """IoU matrix (N, M) between inclusive boxes a (N,4) and b (M,4)."""
    a, b = _as_boxes(a, "boxes a"), _as_boxes(b, "boxes b")
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0 + 1, 0, None) * np.clip(y1 - y0 + 1, 0, None)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union


def greedy_nms(iou: np.ndarray, scores: object, iou_threshold: float) -> np.ndarray:
    """Greedy NMS on a precomputed symmetric IoU matrix: highest score first (ties: lower index first).

    An item is suppressed when its IoU with an already kept item is strictly above ``iou_threshold``.
    Returns kept indices in the order they were kept.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(s)
    if iou.shape != (n, n):
        raise InputError(f"IoU matrix shape {iou.shape} does not match {n} scores")
    order = np.argsort(-s, kind="stable")
    suppressed = np.zeros(n, dtype=bool)
    kept: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        kept.append(int(i))
        suppressed |= iou[i] > iou_threshold
    return np.asarray(kept, dtype=np.int64)


def nms(boxes: object, scores: object, iou_threshold: float = 0.5) -> np.ndarray:
    """Indices of boxes kept by greedy NMS (highest score first, ties by index; suppress IoU > threshold)."""
    b = _as_boxes(boxes, "boxes")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(b):
        raise InputError(f"{len(b)} boxes but {len(s)} scores")
    if len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    return greedy_nms(box_iou(b, b), s, iou_threshold)


def crop_mask_iou(
    crops: Sequence[np.ndarray], boxes: object, pairs: np.ndarray | None = None
) -> np.ndarray:
    """IoU matrix between masks stored as crops inside their inclusive boxes (crop i has the shape of box i).

    Only pairs whose boxes overlap need pixel work; others are 0. ``pairs`` may restrict the work to a
    boolean (N, N) matrix of candidate pairs.
    """
    b = _as_boxes(boxes, "boxes").astype(np.int64)
    n = len(b)
    areas = np.array([int(c.sum()) for c in crops], dtype=np.float64)
    out = np.eye(n, dtype=np.float64)
    cand = box_iou(b, b) > 0 if pairs is None else pairs
    ii, jj = np.nonzero(np.triu(cand, 1))
    for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
        x0, y0 = max(b[i, 0], b[j, 0]), max(b[i, 1], b[j, 1])
        x1, y1 = min(b[i, 2], b[j, 2]), min(b[i, 3], b[j, 3])
        if x1 < x0 or y1 < y0:
            continue
        ci = crops[i][y0 - b[i, 1] : y1 - b[i, 1] + 1, x0 - b[i, 0] : x1 - b[i, 0] + 1]
        cj = crops[j][y0 - b[j, 1] : y1 - b[j, 1] + 1, x0 - b[j, 0] : x1 - b[j, 0] + 1]
        inter = float(np.count_nonzero(ci & cj))
        union = areas[i] + areas[j] - inter
        out[i, j] = out[j, i] = inter / union if union > 0 else 0.0
    return out


def mask_nms(crops: Sequence[np.ndarray], boxes: object, scores: object, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy NMS on mask IoU for masks stored as crops in their inclusive boxes; returns kept indices."""
    if len(crops) == 0:
        return np.zeros(0, dtype=np.int64)
    return greedy_nms(crop_mask_iou(crops, boxes), scores, iou_threshold)
