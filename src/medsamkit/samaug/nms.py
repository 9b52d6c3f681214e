"""Non-maximum suppression for mask proposals: greedy NMS on boxes or on masks (no torchvision).

Boxes are ``[x0, y0, x1, y1]`` with INCLUSIVE pixel maxima (the project's convention; their IoU is
``prompts.boxes.box_iou``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.prompts.boxes import as_boxes, box_iou


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
    b = as_boxes(boxes, "boxes")
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
    b = as_boxes(boxes, "boxes").astype(np.int64)
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
