"""Dice, IoU and confusion counts on tiny masks with hand-computed values; input checks."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from medsamkit.core.errors import InputError
from medsamkit.metrics import confusion, dice, iou


def m(rows: list[str]) -> np.ndarray:
    """Mask from strings: '#' = foreground."""
    return np.array([[c == "#" for c in r] for r in rows])


# pred, truth, (tp, fp, fn), dice, iou
CASES = [
    pytest.param(
        m(["##.", "...", "..."]),
        m(["#..", "#..", "..."]),
        (1, 1, 1),
        Fraction(1, 2),
        Fraction(1, 3),
        id="one-shared-pixel",
    ),
    pytest.param(m(["...", "...", "..."]), m(["...", "...", "..."]), (0, 0, 0), 1, 1, id="both-empty"),
    pytest.param(m(["...", "...", "..."]), m(["##.", "...", "..."]), (0, 0, 2), 0, 0, id="pred-empty"),
    pytest.param(m(["#.#", "...", "..#"]), m(["...", "...", "..."]), (0, 3, 0), 0, 0, id="truth-empty"),
    pytest.param(
        m(["##..", "##..", "....", "...."]),
        m(["####", "####", "....", "...."]),
        (4, 0, 4),
        Fraction(2, 3),
        Fraction(1, 2),
        id="pred-inside-truth",
    ),
    pytest.param(
        m(["#...", ".#..", "..#.", "...#"]),
        m(["#...", ".#..", "..#.", "...#"]),
        (4, 0, 0),
        1,
        1,
        id="identical",
    ),
    pytest.param(
        m(["###", "###", "..."]),
        m(["...", "###", "###"]),
        (3, 3, 3),
        Fraction(1, 2),
        Fraction(1, 3),
        id="half-shift",
    ),
]


@pytest.mark.parametrize("pred, truth, counts, expected_dice, expected_iou", CASES)
def test_dice_iou_table(pred, truth, counts, expected_dice, expected_iou):
    assert confusion(pred, truth) == counts
    assert dice(pred, truth) == pytest.approx(float(expected_dice), abs=1e-12)
    assert iou(pred, truth) == pytest.approx(float(expected_iou), abs=1e-12)


def test_nonzero_values_of_any_dtype_are_foreground():
    pred = np.array([[0, 7, 0], [3, 0, 0]], dtype=np.uint16)
    truth = np.array([[0.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    # tp = 1 (the 7 under 0.5), fp = 1 (the 3), fn = 1 (the -1.0)
    assert confusion(pred, truth) == (1, 1, 1)
    assert dice(pred, truth) == pytest.approx(1 / 2)


def test_dice_is_symmetric_and_iou_relation():
    rng = np.random.default_rng(3)
    a, b = rng.random((8, 8)) > 0.5, rng.random((8, 8)) > 0.4
    d, j = dice(a, b), iou(a, b)
    assert d == pytest.approx(dice(b, a))
    assert d == pytest.approx(2 * j / (1 + j))


def test_shape_mismatch_is_one_clear_input_error():
    with pytest.raises(InputError, match=r"^prediction shape \(2, 3\) does not match truth shape \(3, 2\)$"):
        dice(np.zeros((2, 3)), np.zeros((3, 2)))
    assert issubclass(InputError, ValueError)


@pytest.mark.parametrize("fn", [dice, iou, confusion])
def test_nan_in_float_input_is_rejected(fn):
    pred = np.array([[0.0, np.nan], [1.0, 0.0]])
    with pytest.raises(InputError, match="prediction contains NaN"):
        fn(pred, np.zeros((2, 2)))
    with pytest.raises(InputError, match="truth contains NaN"):
        fn(np.zeros((2, 2)), pred)


def test_non_numeric_input_is_rejected():
    with pytest.raises(InputError, match="dtype"):
        dice(np.array([["a", "b"]]), np.zeros((1, 2)))


def test_metric_accumulator_counts_both_empty_and_infinite_cases():
    from medsamkit.metrics import MetricAccumulator

    acc = MetricAccumulator()
    empty = np.zeros((3, 3))
    pairs = [
        (m(["##.", "...", "..."]), m(["#..", "#..", "..."])),
        (empty, empty),
        (m(["#..", "...", "..."]), empty),
    ]
    for pred, truth in pairs:
        acc.add(dice(pred, truth), both_empty=not pred.any() and not truth.any())
    # values 1/2, 1, 0
    assert acc.summary() == {"mean": 0.5, "median": 0.5, "n": 3, "n_both_empty": 1, "n_infinite": 0}
    acc.add(float("inf"))
    assert acc.summary()["n_infinite"] == 1 and acc.summary()["mean"] == float("inf")
    with pytest.raises(ValueError, match="NaN"):
        acc.add(float("nan"))
    assert MetricAccumulator().summary()["n"] == 0
