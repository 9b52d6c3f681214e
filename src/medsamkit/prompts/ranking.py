"""The ranking of the click search's candidates (``prompts.search``): what is known of each candidate mask
(``ranking_features``) and the score over it, [f, f^2, 1] @ w: the hand-set weights (the default) or the ones
fitted by benchmarks/fit_click_ranker.py (docs/protocols.md "Clicks on box-only models")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

# what the ranking knows of a candidate (``ranking_features``)
FEATURES = ("predicted_iou", "click_depth", "persistence", "stability", "log_area", "clicks_inside",
            "box_over_mask", "click_distance", "box_fit")
# the hand-set ranking (predicted IoU + 0.5 x depth + 2 x persistence + 1 x stability), chosen on GlaS train and
# MoNuSeg train centre clicks: the default
HAND_RANKER = (1.0, 0.5, 2.0, 1.0) + (0.0,) * (2 * len(FEATURES) + 1 - 4)
# fitted by benchmarks/fit_click_ranker.py (GlaS train + MoNuSeg train, centre and random clicks, with the
# off-centre squares); better held out on histology random clicks, much worse on CT: not the default
FITTED_RANKER = (-0.1397, -0.0387, 0.6188, 0.3687, 0.2436, 0.0014, 0.1935, -0.3005, 0.0193,  # f
                 1.9046, 0.3456, 0.2104, 1.3124, -0.1319, 0.0014, -0.1116, -0.1365, -0.0495,  # f^2
                 0.0)  # 1


@dataclass
class Candidates:
    """K candidate masks of one prompt in the low-res frame, sampled every ``stride``-th pixel per axis."""

    boxes: np.ndarray  # (K, 4) model-input pixels
    logits: torch.Tensor  # (K, m/s, m/s)
    iou: np.ndarray  # (K,) predicted IoU
    masks: np.ndarray  # (K, m/s, m/s) bool, zero outside the image part of the frame
    stride: int = 1
    # (K,) bool: the candidates whose masks count in each one's persistence (None: all). Boxes grown from the image
    # content do not: nested regions of one similarity map, they agree with each other by construction
    voters: np.ndarray | None = None

    def voting(self) -> np.ndarray:
        """The ``voters`` (K,) bool, all True when unset."""
        return np.ones(len(self), dtype=bool) if self.voters is None else np.asarray(self.voters, dtype=bool)

    def take(self, index: np.ndarray | slice) -> Candidates:
        """The candidates at ``index`` (an index array or a slice), in its order."""
        index = index if isinstance(index, slice) else np.asarray(index)
        return Candidates(self.boxes[index], self.logits[index], self.iou[index], self.masks[index], self.stride,
                          self.voting()[index])

    def __len__(self) -> int:
        return len(self.boxes)


def click_depth(mask: np.ndarray, clicks: np.ndarray) -> float:
    """Mean over ``clicks`` (N, 2; x, y low-res px) of the distance to the background of the mask component
    holding the click, over that component's largest distance (1: the click is at its centre; 0: outside)."""
    if not len(clicks) or not mask.any():
        return 0.0
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top, left = rows[0], cols[0]
    labels, _ = ndimage.label(mask[top : rows[-1] + 1, left : cols[-1] + 1])  # the crop holding the mask
    parts = None
    depths = []
    for x, y in np.asarray(clicks).astype(int):
        x, y = x - left, y - top
        inside = 0 <= y < labels.shape[0] and 0 <= x < labels.shape[1]
        comp = labels[y, x] if inside else 0
        if comp == 0:
            depths.append(0.0)
            continue
        parts = ndimage.find_objects(labels) if parts is None else parts
        part = parts[comp - 1]
        crop = np.pad(labels[part] == comp, 1)
        dist = ndimage.distance_transform_edt(crop)
        depths.append(float(dist[y - part[0].start + 1, x - part[1].start + 1] / dist.max()))
    return float(np.mean(depths))


def persistence(masks: np.ndarray, voters: np.ndarray | None = None) -> np.ndarray:
    """Per mask, the mean over the other masks (of the ``voters``, (K,) bool; default all) of their IoU with it:
    how many boxes agree on it."""
    k = len(masks)
    voters = np.ones(k, dtype=bool) if voters is None else np.asarray(voters, dtype=bool)
    if k < 2 or voters.sum() < 1:
        return np.zeros(k)
    any_px = masks.any(0)
    rows, cols = np.nonzero(any_px.any(1))[0], np.nonzero(any_px.any(0))[0]
    if not len(rows):
        return np.zeros(k)
    flat = masks[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].reshape(k, -1).astype(np.float32)
    area = flat.sum(1)
    inter = flat @ flat.T
    union = area[:, None] + area[None] - inter
    pair = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    np.fill_diagonal(pair, 0.0)
    others = voters.sum() - voters  # the voters other than the mask itself
    return np.where(others > 0, pair[:, voters].sum(1) / np.maximum(others, 1), 0.0)


def stability(logits: torch.Tensor, offset: float) -> np.ndarray:
    """SAM's stability score per mask: |logits > offset| / |logits > -offset| (0 when nothing is above)."""
    high = (logits > offset).flatten(1).sum(1).double()
    low = (logits > -offset).flatten(1).sum(1).double()
    return torch.where(low > 0, high / low.clamp(min=1), torch.zeros_like(low)).cpu().numpy()


def honours(mask: np.ndarray, clicks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per click (x, y in the mask's pixels), whether the mask agrees with it (positive inside, negative out);
    for a stack of masks (..., H, W), per mask and click (..., N)."""
    if not len(clicks):
        return np.zeros(mask.shape[:-2] + (0,), dtype=bool)
    xy = np.asarray(clicks).astype(int)
    xy[:, 0] = np.clip(xy[:, 0], 0, mask.shape[-1] - 1)
    xy[:, 1] = np.clip(xy[:, 1], 0, mask.shape[-2] - 1)
    inside = mask[..., xy[:, 1], xy[:, 0]]
    return inside == (np.asarray(labels) == 1)


def own_features(cands: Candidates, clicks: np.ndarray, labels: np.ndarray, per_px: float,
                 stability_offset: float = 1.0) -> np.ndarray:
    """The columns (K, len(OWN)) of ``ranking_features`` that each candidate has alone, whatever the others are
    (the rest compare it with them): computed once per candidate when a search ranks a growing set."""
    s = cands.stride
    positives = np.asarray(clicks)[np.asarray(labels) == 1]
    area = np.maximum(cands.masks.reshape(len(cands), -1).sum(1) * s * s, 1).astype(np.float64)
    side = np.maximum(cands.boxes[:, 2] - cands.boxes[:, 0], cands.boxes[:, 3] - cands.boxes[:, 1]) * per_px
    distance = np.array([click_distance(m, positives) * s for m in cands.masks])
    depth = np.array([click_depth(m, positives) for m in cands.masks])
    tight = np.array([mask_extent(m) for m in cands.masks], dtype=np.float64).reshape(-1, 4) * s / per_px
    return np.stack([np.asarray(cands.iou, dtype=np.float64), depth, stability(cands.logits, stability_offset),
                     np.log(area), distance, np.log(np.maximum(side, 1)), _box_iou(cands.boxes, tight)], 1)


OWN = ("predicted_iou", "click_depth", "stability", "log_area", "click_distance", "log_side", "box_fit")


def ranking_features(cands: Candidates, clicks: np.ndarray, labels: np.ndarray, per_px: float,
                     reach: float = 0.0, stability_offset: float = 1.0, own: np.ndarray | None = None) -> np.ndarray:
    """Features (K, len(FEATURES)) of the candidates for clicks (N, 2; sampled low-res px) with labels (N,):
    predicted IoU, depth of the positive clicks, persistence, stability, log area over the candidates' median,
    whether every positive click is within ``reach`` (low-res px), log of the box side over the mask's, the
    positive clicks' largest distance to the mask (low-res px, at most 5), IoU of the box with the mask's
    tight box. ``per_px``: low-res px per model-input px (full frame); ``own``: ``own_features`` of the same
    candidates and clicks when already known."""
    if own is None:
        own = own_features(cands, clicks, labels, per_px, stability_offset)
    col = dict(zip(OWN, own.T))
    log_area, distance = col["log_area"], col["click_distance"]
    return np.stack([col["predicted_iou"], col["click_depth"], persistence(cands.masks, cands.voters),
                     col["stability"], log_area - np.median(log_area), (distance <= reach).astype(np.float64),
                     col["log_side"] - log_area / 2, np.minimum(distance, 5.0), col["box_fit"]], 1)


def click_distance(mask: np.ndarray, points: np.ndarray) -> float:
    """The largest distance (px) of the points (N, 2; x, y) to the mask (0 inside; 99 for an empty mask)."""
    if not len(points):
        return 0.0
    if not mask.any():
        return 99.0
    xy = np.clip(np.asarray(points).astype(int), 0, np.array(mask.shape[::-1]) - 1)
    if mask[xy[:, 1], xy[:, 0]].all():
        return 0.0
    ys, xs = np.nonzero(mask)
    d2 = (xs[None] - xy[:, :1]) ** 2 + (ys[None] - xy[:, 1:]) ** 2
    return float(np.sqrt(d2.min(1).max()))


def mask_extent(mask: np.ndarray) -> list[float]:
    """[x0, y0, x1, y1) of the mask's pixels (zeros for an empty mask)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return [0.0, 0.0, 0.0, 0.0]
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a[i] and b[i] (K, 4 each; x0, y0, x1, y1)."""
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(union, 1e-6)


def score_features(features: np.ndarray, weights: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """The ranker's scores (K,) of features (K, F): [f, f^2, 1] @ weights (predicted IoU without weights)."""
    f = np.asarray(features, dtype=np.float64)
    if not len(weights):  # no ranker: the model's predicted IoU
        return f[:, FEATURES.index("predicted_iou")].copy()
    return np.concatenate([f, f * f, np.ones((len(f), 1))], 1) @ np.asarray(weights, dtype=np.float64)
