"""One argument order for every public metric: metric(pred, truth), both names usable as keywords.

Each test has a case whose expected values were worked out by hand and differ when the two maps swap
roles, so a metric that read its arguments the other way round fails. Dice, IoU, HD95, NSD and the GlaS
object Dice / Hausdorff are symmetric by definition; for them the test pins the value by keyword and
checks the symmetry, and their asymmetric parts (confusion counts, directed surface distances) are
pinned by the tests of ``confusion`` and ``surface_distances``.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import medsamkit.metrics as metrics
from medsamkit.metrics import (
    aji,
    confusion,
    dice,
    hd95,
    iou,
    nsd,
    object_dice,
    object_f1,
    object_f1_counts,
    object_hausdorff,
    surface_dice,
    surface_distances,
)

PUBLIC_METRICS = [
    aji,
    confusion,
    dice,
    hd95,
    iou,
    nsd,
    object_dice,
    object_f1,
    object_f1_counts,
    object_hausdorff,
    surface_dice,
    surface_distances,
]


@pytest.mark.parametrize("metric", PUBLIC_METRICS, ids=lambda f: f.__name__)
def test_signature_is_pred_then_truth(metric):
    names = list(inspect.signature(metric).parameters)
    assert names[:2] == ["pred", "truth"]


def test_every_exported_function_is_covered():
    exported = {name for name in metrics.__all__ if inspect.isfunction(getattr(metrics, name))}
    assert exported == {f.__name__ for f in PUBLIC_METRICS}


def nested_squares() -> tuple[np.ndarray, np.ndarray]:
    """7x7: truth a filled 5x5 square, prediction the 3x3 square at its centre (pred inside truth)."""
    truth = np.zeros((7, 7), dtype=bool)
    truth[1:6, 1:6] = True
    pred = np.zeros((7, 7), dtype=bool)
    pred[2:5, 2:5] = True
    return pred, truth


def test_confusion_counts_pred_inside_truth():
    pred, truth = nested_squares()
    # 9 shared pixels; the truth has 16 more, the prediction none.
    assert confusion(truth=truth, pred=pred) == (9, 0, 16)
    assert confusion(pred, truth) == (9, 0, 16)
    assert confusion(truth, pred) == (9, 16, 0)


def test_dice_iou_by_keyword():
    pred, truth = nested_squares()
    assert dice(truth=truth, pred=pred) == pytest.approx(18 / 34)  # 2*9 / (9+25)
    assert iou(truth=truth, pred=pred) == pytest.approx(9 / 25)
    assert dice(truth, pred) == dice(pred, truth) and iou(truth, pred) == iou(pred, truth)


def test_surface_distances_directions_pred_inside_truth():
    pred, truth = nested_squares()
    # Prediction surface: the 8-pixel ring of the 3x3 square, each 1 px from the truth ring.
    # Truth surface: the 16-pixel ring; 12 edge pixels are 1 px from the inner ring, 4 corners sqrt(2).
    to_truth, to_pred = surface_distances(truth=truth, pred=pred)
    assert sorted(to_truth.tolist()) == [1.0] * 8
    assert sorted(to_pred.tolist()) == pytest.approx([1.0] * 12 + [math.sqrt(2)] * 4)
    swapped_to_truth, _ = surface_distances(truth, pred)
    assert swapped_to_truth.size == 16


def test_hd95_nsd_by_keyword():
    pred, truth = nested_squares()
    # Directed 95th percentiles: prediction side 1, truth side sqrt(2) (14.25th of 16 sorted values).
    assert hd95(truth=truth, pred=pred) == pytest.approx(math.sqrt(2))
    # Within 1 px: all 8 prediction points and the 12 truth edge points, of 24.
    assert nsd(truth=truth, pred=pred, tolerance_mm=1.0) == pytest.approx(20 / 24)
    assert hd95(truth, pred) == hd95(pred, truth)
    assert nsd(truth, pred) == nsd(pred, truth)
    assert surface_dice(truth=truth, pred=pred, tolerance_mm=1.0) == pytest.approx(20 / 24)


def over_segmented() -> tuple[np.ndarray, np.ndarray]:
    """One 2x4 truth object split by the prediction into S1 (columns 0-2, 6 px) and S2 (column 3, 2 px)."""
    truth = np.ones((2, 4), dtype=np.int32)
    pred = np.ones((2, 4), dtype=np.int32)
    pred[:, 3] = 2
    return pred, truth


def test_aji_one_over_segmented_prediction():
    pred, truth = over_segmented()
    # G picks S1 (IoU 6/8): 6 / (8 + |S2| = 2).
    assert aji(truth=truth, pred=pred) == pytest.approx(3 / 5)
    # Roles swapped: S1 and S2 both pick G: (6 + 2) / (8 + 8).
    assert aji(truth, pred) == pytest.approx(1 / 2)


def test_object_dice_and_hausdorff_by_keyword():
    pred, truth = over_segmented()
    # Dice: S side 6/8 * 12/14 + 2/8 * 4/10 = 26/35, G side (partner S1) 6/7 = 30/35; mean 4/5.
    assert object_dice(truth=truth, pred=pred) == pytest.approx(4 / 5)
    # Hausdorff: H(S1, G) = 1, H(S2, G) = 3; S side 6/8 * 1 + 2/8 * 3 = 3/2, G side 1; mean 5/4.
    assert object_hausdorff(truth=truth, pred=pred) == pytest.approx(5 / 4)
    assert object_dice(truth, pred) == pytest.approx(4 / 5)
    assert object_hausdorff(truth, pred) == pytest.approx(5 / 4)


def more_predicted_than_true() -> tuple[np.ndarray, np.ndarray]:
    """2x10: truth G1 (columns 0-3, 8 px) and G2 (column 7, 2 px); three predictions.

    S1 = columns 0-2 of G1 (6 px), S2 = column 3 of G1 (2 px), S3 = columns 6-9 (8 px, all of G2).
    """
    truth = np.zeros((2, 10), dtype=np.int32)
    truth[:, 0:4] = 1
    truth[:, 7] = 2
    pred = np.zeros((2, 10), dtype=np.int32)
    pred[:, 0:3] = 1
    pred[:, 3] = 2
    pred[:, 6:10] = 3
    return pred, truth


def test_object_f1_more_predicted_than_true_objects():
    pred, truth = more_predicted_than_true()
    # TP: S1 (6/8 of G1), S3 (2/2 of G2). FP: S2 (2/8). FN = 2 - 2. F1 = 4 / 5.
    assert object_f1_counts(truth=truth, pred=pred) == (2, 1, 0)
    assert object_f1(truth=truth, pred=pred) == pytest.approx(4 / 5)
    # Roles swapped: G1 covers all of S1 (TP) but G2 only 2/8 of S3: TP 1, FP 1, FN 3 - 1.
    assert object_f1_counts(truth, pred) == (1, 1, 2)
    assert object_f1(truth, pred) == pytest.approx(2 / 5)
