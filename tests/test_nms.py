"""Box IoU and greedy NMS against hand-computed cases and a brute-force reference on random boxes."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.core.errors import InputError
from medsamkit.prompts.boxes import box_area, box_iou
from medsamkit.samaug.nms import crop_mask_iou, mask_nms, nms


def brute_iou(a, b) -> float:
    """IoU of two inclusive boxes by counting pixels."""
    w = int(max(a[2], b[2])) + 2
    h = int(max(a[3], b[3])) + 2
    ma, mb = np.zeros((h, w), bool), np.zeros((h, w), bool)
    ma[a[1] : a[3] + 1, a[0] : a[2] + 1] = True
    mb[b[1] : b[3] + 1, b[0] : b[2] + 1] = True
    return (ma & mb).sum() / (ma | mb).sum()


def brute_nms(boxes, scores, thr) -> list[int]:
    """The textbook loop: repeatedly keep the best remaining box, drop those overlapping it by > thr."""
    remaining = list(range(len(boxes)))
    kept = []
    while remaining:
        best = max(remaining, key=lambda i: (scores[i], -i))
        kept.append(best)
        remaining = [i for i in remaining if i != best and brute_iou(boxes[best], boxes[i]) <= thr]
    return kept


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 9, 9], [0, 0, 9, 9], 1.0),
        ([0, 0, 9, 9], [10, 10, 19, 19], 0.0),  # touching corners share no pixel
        ([0, 0, 9, 9], [5, 0, 14, 9], 50 / 150),  # half overlap: 50 px shared, 150 px union
        ([0, 0, 3, 3], [1, 1, 2, 2], 4 / 16),  # nested
        ([2, 2, 2, 2], [2, 2, 2, 2], 1.0),  # one-pixel boxes have area 1
    ],
)
def test_box_iou_hand_cases(a, b, expected):
    assert box_iou([a], [b])[0, 0] == pytest.approx(expected)


def test_box_area_inclusive():
    assert box_area(np.array([[0, 0, 9, 4], [3, 3, 3, 3], [3, 3, 4, 7]])).tolist() == [50, 1, 10]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(seed, thr):
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 40, size=(60, 2))
    wh = rng.integers(0, 15, size=(60, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.integers(0, 10, size=60).astype(float)  # many ties: the index decides
    iou = box_iou(boxes, boxes)
    brute = np.array([[brute_iou(a, b) for b in boxes] for a in boxes])
    np.testing.assert_allclose(iou, brute)
    assert nms(boxes, scores, thr).tolist() == brute_nms(boxes, scores, thr)


def test_nms_hand_case():
    boxes = [[0, 0, 9, 9], [1, 0, 10, 9], [20, 20, 29, 29], [0, 0, 9, 9]]
    # box 1 overlaps box 0 by 90/110 > 0.5; box 3 equals box 0 and ties its score: index 0 wins.
    assert nms(boxes, [0.9, 0.95, 0.1, 0.95], 0.5).tolist() == [1, 2]
    assert nms(boxes, [0.9, 0.8, 0.1, 0.9], 0.5).tolist() == [0, 2]
    # IoU exactly at the threshold is kept (suppression needs IoU > threshold).
    assert nms([[0, 0, 9, 9], [5, 0, 14, 9]], [1, 0.5], 50 / 150).tolist() == [0, 1]


def test_nms_empty_and_bad_input():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(InputError, match="scores"):
        nms([[0, 0, 1, 1]], [1, 2], 0.5)
    with pytest.raises(InputError, match="x1 < x0"):
        box_iou([[5, 0, 1, 1]], [[0, 0, 1, 1]])


def test_mask_nms_on_crops():
    # Two masks in the same box differing by one column, and one far away.
    a = np.ones((4, 4), bool)
    b = a.copy()
    b[:, 3] = False
    c = np.ones((2, 2), bool)
    boxes = [[0, 0, 3, 3], [0, 0, 3, 3], [10, 10, 11, 11]]
    iou = crop_mask_iou([a, b, c], boxes)
    assert iou[0, 1] == pytest.approx(12 / 16)
    assert iou[0, 2] == 0.0
    assert mask_nms([a, b, c], boxes, [0.5, 0.9, 0.1], 0.7).tolist() == [1, 2]
    assert mask_nms([a, b, c], boxes, [0.5, 0.9, 0.1], 0.8).tolist() == [1, 0, 2]
