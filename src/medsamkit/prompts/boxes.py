"""Box geometry, and which of the model's outputs answers a box: boxes are ``[x0, y0, x1, y1]`` with INCLUSIVE pixel
maxima (the project's convention), so a box covers ``(x1 - x0 + 1) * (y1 - y0 + 1)`` pixels; a one-pixel box has
area 1."""

from __future__ import annotations

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.predictor import Prediction, Predictor
from medsamkit.prompts.simulate import tight_box


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


def box_fit(mask: np.ndarray, box: object) -> float:
    """How well an answer fills a box: the IoU of ``mask``'s tight box with ``box`` (x0, y0, x1, y1; 0: empty)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return 0.0
    return float(box_iou(tight_box(m)[None], np.asarray(box, dtype=np.float64).reshape(1, 4))[0, 0])


BOX_OUTPUTS = ("single", "fit")  # which output answers a box: the single-mask one, or the one that fills the box
# a multimask output answers a box only when it fills it better than the single output by more than this (box IoU);
# chosen on builtin:lung-gtv's 3D box slices, docs/protocols.md "Which output answers the object"
FIT_MARGIN = 0.05


def fitting_outputs(boxes: np.ndarray, single: Prediction, multi: Prediction, margin: float = FIT_MARGIN
                    ) -> tuple[Prediction, np.ndarray]:
    """Per box, the answer of the output that fills it best: the multimask output (of ``multi``) whose answer's
    tight box fits the box best, when that fit beats the single output's (``single``) by more than ``margin``,
    else the single output. Returns the chosen answers (P, 1, ...) and the output taken per box (-1: single)."""
    masks, iou, low = (x.copy() for x in (single.masks, single.iou, single.low_res_logits))
    heads = np.full(len(masks), -1, dtype=int)
    for k, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        fits = [box_fit(m, box) for m in multi.masks[k]]
        best = int(np.argmax(fits))
        if fits[best] > box_fit(single.masks[k, 0], box) + margin:
            heads[k] = best
            masks[k, 0], iou[k, 0], low[k, 0] = multi.masks[k, best], multi.iou[k, best], multi.low_res_logits[k, best]
    return Prediction(masks, iou, low), heads


def fitted_answer(predictor: Predictor, boxes: np.ndarray, margin: float = FIT_MARGIN) -> tuple[Prediction, np.ndarray]:
    """``boxes`` (P, 4) answered on the predictor's embedding by the output that fills each best
    (``fitting_outputs``): the chosen answers (P, 1, ...) and the output taken per box (-1: single)."""
    return fitting_outputs(boxes, predictor.predict(boxes=boxes), predictor.predict(boxes=boxes, multimask=True),
                           margin)
