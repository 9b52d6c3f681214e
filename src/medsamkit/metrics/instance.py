"""Instance-level metrics on label maps: AJI (Kumar 2017, MoNuSeg) and GlaS object F1 / Dice / Hausdorff.

Every function takes the prediction first and the truth second (``pred``, ``truth``), as the overlap and
surface metrics do (MONAI's order). GlaS rules follow the challenge's official evaluation code
(F1score.m, ObjectDice.m, ObjectHausdorff.m); docs/protocols.md states them.

Label maps are integer arrays (any dtype; bool = one object; float only if integer-valued) where 0 is
background and every other id is one object, even when its pixels are not connected. Ids need not be
contiguous; "smallest label" in tie rules refers to the original ids. All pairwise overlaps come from
one joint histogram of (truth id, prediction id), so cost grows with pixels, not with objects squared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medsamkit.core.errors import InputError
from medsamkit.metrics.overlap import checked_pair

_DENSE_TABLE_LIMIT = 1 << 24  # joint-histogram cells beyond which the sparse (np.unique) path is cheaper


def _relabel(labels: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """Map the nonzero ids to 1..n in increasing order of the original id; 0 stays background."""
    if labels.dtype.kind == "b":
        return labels.astype(np.int64), int(labels.any())
    if labels.dtype.kind == "f":
        if not np.array_equal(labels, np.round(labels)):
            raise InputError(f"{name} label map has non-integer values; expected instance ids")
        labels = labels.astype(np.int64)
    if labels.size == 0:
        return labels.astype(np.int64), 0
    lo, hi = int(labels.min()), int(labels.max())
    if lo >= 0 and hi <= 4 * labels.size + 65536:
        # Lookup table over the id range: far faster than sorting a million pixels with np.unique.
        present = np.zeros(hi + 1, dtype=bool)
        present[labels.ravel()] = True
        present[0] = False
        lut = np.cumsum(present, dtype=np.int64)
        lut[~present] = 0
        return lut[labels], int(lut[-1]) if hi > 0 else 0
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.int64)
    zero = np.searchsorted(ids, 0)
    has_zero = zero < ids.size and ids[zero] == 0
    # Renumber so that 0 -> 0 and the nonzero ids keep their sorted order as 1..n.
    new = np.arange(ids.size, dtype=np.int64) + 1
    if has_zero:
        new[zero] = 0
        new[zero + 1 :] -= 1
    return new[inverse], int(ids.size - has_zero)


@dataclass(frozen=True)
class _Overlaps:
    """Sparse table of overlapping (truth, prediction) pairs plus per-object areas (index 0 = background)."""

    truth: np.ndarray
    pred: np.ndarray
    count: np.ndarray
    truth_area: np.ndarray
    pred_area: np.ndarray


def _overlaps(truth: np.ndarray, pred: np.ndarray, n_truth: int, n_pred: int) -> _Overlaps:
    both = (truth > 0) & (pred > 0)
    codes = truth[both] * (n_pred + 1) + pred[both]
    cells = (n_truth + 1) * (n_pred + 1)
    if cells <= _DENSE_TABLE_LIMIT:
        table = np.bincount(codes, minlength=cells)
        codes = np.flatnonzero(table)
        count = table[codes]
    else:
        codes, count = np.unique(codes, return_counts=True)
    return _Overlaps(
        truth=codes // (n_pred + 1),
        pred=codes % (n_pred + 1),
        count=count.astype(np.int64),
        truth_area=np.bincount(truth.ravel(), minlength=n_truth + 1),
        pred_area=np.bincount(pred.ravel(), minlength=n_pred + 1),
    )


def _first_per_group(group: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Indices (into the unsorted arrays) of the first row of each group after sorting by ``order``."""
    g = group[order]
    starts = np.ones(g.size, dtype=bool)
    starts[1:] = g[1:] != g[:-1]
    return order[starts]


def _prepare(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Check the pair and relabel both maps; returns (truth ids, prediction ids, n_truth, n_pred)."""
    pred, truth = checked_pair(pred, truth)
    t, n_truth = _relabel(truth, "truth")
    p, n_pred = _relabel(pred, "prediction")
    return t, p, n_truth, n_pred


def aji(pred: np.ndarray, truth: np.ndarray) -> float:
    """Aggregated Jaccard Index of one image (docs/protocols.md); 1.0 when both maps are empty.

    Each truth object picks the prediction of largest IoU (ties: smallest id; may repeat; none without
    overlap). Exactly one map empty gives 0.0 (no intersection over a positive denominator).
    """
    t, p, n_truth, n_pred = _prepare(pred, truth)
    if n_truth == 0 and n_pred == 0:
        return 1.0
    ov = _overlaps(t, p, n_truth, n_pred)
    union = ov.truth_area[ov.truth] + ov.pred_area[ov.pred] - ov.count
    iou = ov.count / union
    best = _first_per_group(ov.truth, np.lexsort((ov.pred, -iou, ov.truth)))
    picked = np.zeros(n_pred + 1, dtype=bool)
    picked[ov.pred[best]] = True
    matched = np.zeros(n_truth + 1, dtype=bool)
    matched[ov.truth[best]] = True
    intersection = int(ov.count[best].sum())
    denominator = (
        int(union[best].sum())
        + int(ov.truth_area[1:][~matched[1:]].sum())
        + int(ov.pred_area[1:][~picked[1:]].sum())
    )
    return intersection / denominator


def _partners(
    ov: _Overlaps, n_truth: int, n_pred: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GlaS partners: majority label under each object, background excluded, ties -> smallest id.

    Returns (partner of each prediction, its overlap, partner of each truth object, its overlap), each
    indexed by id with 0 = no partner.
    """
    pred_partner = np.zeros(n_pred + 1, dtype=np.int64)
    pred_overlap = np.zeros(n_pred + 1, dtype=np.int64)
    rows = _first_per_group(ov.pred, np.lexsort((ov.truth, -ov.count, ov.pred)))
    pred_partner[ov.pred[rows]] = ov.truth[rows]
    pred_overlap[ov.pred[rows]] = ov.count[rows]
    truth_partner = np.zeros(n_truth + 1, dtype=np.int64)
    truth_overlap = np.zeros(n_truth + 1, dtype=np.int64)
    rows = _first_per_group(ov.truth, np.lexsort((ov.pred, -ov.count, ov.truth)))
    truth_partner[ov.truth[rows]] = ov.pred[rows]
    truth_overlap[ov.truth[rows]] = ov.count[rows]
    return pred_partner, pred_overlap, truth_partner, truth_overlap


def object_f1_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """GlaS object detection counts ``(tp, fp, fn)``, as the official F1score.m counts them.

    A prediction is TP when its partner G exists and |S∩G| > |G|/2; FP = n_pred - TP; FN = n_truth - TP
    (a truth object whose only partner covers half of it or less IS a false negative).
    """
    t, p, n_truth, n_pred = _prepare(pred, truth)
    ov = _overlaps(t, p, n_truth, n_pred)
    pred_partner, pred_overlap, _, _ = _partners(ov, n_truth, n_pred)
    has_partner = pred_partner[1:] > 0
    tp = int(np.count_nonzero(has_partner & (2 * pred_overlap[1:] > ov.truth_area[pred_partner[1:]])))
    # Two disjoint predictions cannot each cover more than half of one G, so tp <= n_truth.
    return tp, n_pred - tp, n_truth - tp


def object_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    """GlaS object F1 = 2TP / (2TP + FP + FN); 1.0 when both maps are empty, 0.0 when exactly one is."""
    tp, fp, fn = object_f1_counts(pred, truth)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def object_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """GlaS object Dice: area-weighted Dice of each object with its partner, averaged over both maps.

    1.0 when both maps are empty, 0.0 when exactly one is; an object without a partner scores 0.
    Symmetric in its two arguments, like the official ObjectDice.m.
    """
    t, p, n_truth, n_pred = _prepare(pred, truth)
    if n_truth == 0 or n_pred == 0:
        return 1.0 if n_truth == n_pred else 0.0
    ov = _overlaps(t, p, n_truth, n_pred)
    pred_partner, pred_overlap, truth_partner, truth_overlap = _partners(ov, n_truth, n_pred)

    def weighted(area: np.ndarray, other_area: np.ndarray, partner: np.ndarray, overlap: np.ndarray) -> float:
        a = area[1:].astype(float)
        per_object = np.where(partner[1:] > 0, 2 * overlap[1:] / (a + other_area[partner[1:]]), 0.0)
        return float((a / a.sum() * per_object).sum())

    return 0.5 * (
        weighted(ov.pred_area, ov.truth_area, pred_partner, pred_overlap)
        + weighted(ov.truth_area, ov.pred_area, truth_partner, truth_overlap)
    )


class _HausdorffPairs:
    """Exact Euclidean Hausdorff distance between objects of two label maps (full pixel sets, pixels)."""

    def __init__(self, truth: np.ndarray, pred: np.ndarray, n_truth: int, n_pred: int) -> None:
        self.truth, self.pred = truth, pred
        self.truth_boxes = ndimage.find_objects(truth, max_label=n_truth)
        self.pred_boxes = ndimage.find_objects(pred, max_label=n_pred)
        self._cache: dict[tuple[int, int], float] = {}

    @staticmethod
    def _bounds(boxes: list[tuple[slice, ...]]) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([[s.start for s in b] for b in boxes], dtype=float)
        hi = np.array([[s.stop - 1 for s in b] for b in boxes], dtype=float)
        return lo, hi

    def distance(self, g: int, s: int) -> float:
        """Hausdorff distance between truth object ``g`` and prediction object ``s`` (1-based ids)."""
        key = (g, s)
        if key not in self._cache:
            gb, sb = self.truth_boxes[g - 1], self.pred_boxes[s - 1]
            # Both objects lie inside their joint box, so distance transforms there are exact.
            box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(gb, sb))
            gm, sm = self.truth[box] == g, self.pred[box] == s
            g_to_s = ndimage.distance_transform_edt(~sm)[gm].max()
            s_to_g = ndimage.distance_transform_edt(~gm)[sm].max()
            self._cache[key] = float(max(g_to_s, s_to_g))
        return self._cache[key]

    def nearest(self, obj: int, from_truth: bool) -> float:
        """Smallest Hausdorff distance from one object to any object of the other map.

        Candidates are visited in order of a lower bound (H >= |difference of bounding-box edges| on
        every axis) and the search stops once the bound exceeds the best distance found.
        """
        own = self.truth_boxes if from_truth else self.pred_boxes
        others = self.pred_boxes if from_truth else self.truth_boxes
        lo, hi = self._bounds(others)
        olo, ohi = self._bounds([own[obj - 1]])
        bound = np.maximum(np.abs(lo - olo), np.abs(hi - ohi)).max(axis=1)
        best = np.inf
        for idx in np.argsort(bound, kind="stable"):
            if bound[idx] > best:
                break
            other = int(idx) + 1
            d = self.distance(obj, other) if from_truth else self.distance(other, obj)
            best = min(best, d)
        return float(best)


def object_hausdorff(pred: np.ndarray, truth: np.ndarray) -> float:
    """GlaS object Hausdorff (pixels): area-weighted Hausdorff of each object with its partner, both maps.

    An object without an overlapping partner is paired with the other map's object at the smallest
    Hausdorff distance. 0.0 when both maps are empty, inf when exactly one is. Symmetric in its arguments.
    """
    t, p, n_truth, n_pred = _prepare(pred, truth)
    if n_truth == 0 or n_pred == 0:
        return 0.0 if n_truth == n_pred else float("inf")
    ov = _overlaps(t, p, n_truth, n_pred)
    pred_partner, _, truth_partner, _ = _partners(ov, n_truth, n_pred)
    pairs = _HausdorffPairs(t, p, n_truth, n_pred)
    pred_h = np.array(
        [
            pairs.distance(int(pred_partner[s]), s) if pred_partner[s] else pairs.nearest(s, from_truth=False)
            for s in range(1, n_pred + 1)
        ]
    )
    truth_h = np.array(
        [
            pairs.distance(g, int(truth_partner[g]))
            if truth_partner[g]
            else pairs.nearest(g, from_truth=True)
            for g in range(1, n_truth + 1)
        ]
    )
    pa, ta = ov.pred_area[1:].astype(float), ov.truth_area[1:].astype(float)
    return float(0.5 * ((pa / pa.sum() * pred_h).sum() + (ta / ta.sum() * truth_h).sum()))
