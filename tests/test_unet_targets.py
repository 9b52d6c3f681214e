"""Three-class targets and instance recovery (medsamkit.samaug.unet_targets) on hand-made label maps."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.core.errors import InputError
from medsamkit.io.images import read_label
from medsamkit.metrics import aji
from medsamkit.samaug.unet_targets import class_map, instances_from_probs, three_class_target


def _touching_squares() -> np.ndarray:
    lab = np.zeros((7, 12), dtype=np.uint16)
    lab[1:6, 1:5] = 1
    lab[1:6, 5:10] = 2
    return lab


TOUCHING_TARGET = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0],
    [0, 2, 1, 1, 2, 2, 1, 1, 1, 2, 0, 0],
    [0, 2, 1, 1, 2, 2, 1, 1, 1, 2, 0, 0],
    [0, 2, 1, 1, 2, 2, 1, 1, 1, 2, 0, 0],
    [0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
], dtype=np.uint8)


def _square(size: int, side: int, top: int = 1) -> np.ndarray:
    lab = np.zeros((size, size), dtype=np.int32)
    lab[top:top + side, top:top + side] = 7
    return lab


@pytest.mark.parametrize(
    "labels, width, n_interior, n_boundary",
    [
        (_square(8, 6), 1, 16, 20),  # 6x6 square: 1-px ring of 20, 4x4 interior
        (_square(8, 6), 2, 4, 32),  # ring 2 px thick inwards: only the central 2x2 stays interior
        (_square(8, 6), 3, 0, 36),  # thicker than half the object: all boundary, never outside it
        (_square(5, 1), 1, 0, 1),  # a single-pixel object is all boundary
        (np.zeros((4, 4), dtype=np.int32), 1, 0, 0),  # no objects
    ],
)
def test_three_class_target_counts(labels, width, n_interior, n_boundary):
    target = three_class_target(labels, boundary_width=width)
    assert target.dtype == np.uint8 and target.shape == labels.shape
    assert int((target == 1).sum()) == n_interior
    assert int((target == 2).sum()) == n_boundary
    # background is exactly the unlabelled pixels, whatever the width
    assert np.array_equal(target == 0, labels == 0)


def test_touching_instances_get_a_two_pixel_boundary_between_them():
    assert np.array_equal(three_class_target(_touching_squares()), TOUCHING_TARGET)


def test_touching_squares_recovered_from_their_perfect_target():
    lab = _touching_squares()
    inst = instances_from_probs(three_class_target(lab), min_size=1)
    assert inst.dtype == np.int32
    assert int(inst.max()) == 2
    assert aji(inst, lab) == 1.0
    # the boundary columns 4 and 5 go back to the square they belong to
    assert len(np.unique(inst[1:6, 4])) == 1 and len(np.unique(inst[1:6, 5])) == 1
    assert inst[3, 4] != inst[3, 5]


def test_probabilities_are_argmaxed_like_the_class_map():
    lab = _touching_squares()
    onehot = np.eye(3, dtype=np.float32)[TOUCHING_TARGET].transpose(2, 0, 1)
    probs = 0.1 + 0.7 * onehot  # (3, H, W), max at the true class
    assert np.array_equal(class_map(probs), TOUCHING_TARGET)
    assert aji(instances_from_probs(probs, min_size=1), lab) == 1.0


def test_small_seeds_are_dropped_and_seedless_regions_stay_background():
    classes = np.zeros((8, 16), dtype=np.uint8)
    classes[1:7, 1:7] = 2
    classes[2:6, 2:6] = 1  # seed of 16 px: kept
    classes[1:5, 9:13] = 2
    classes[2:4, 10:12] = 1  # seed of 4 px: below min_size 5, dropped with its object
    classes[6, 14] = 2  # boundary-only speck: no seed
    inst = instances_from_probs(classes, min_size=5)
    assert int(inst.max()) == 1
    assert int((inst == 1).sum()) == 36
    assert not inst[:, 8:].any()
    assert int(instances_from_probs(classes, min_size=4).max()) == 2


def test_real_monuseg_labels_round_trip(monuseg_root):
    label_path = sorted((monuseg_root / "test" / "labels").iterdir())[0]
    lab = read_label(label_path)[:256, :256]
    inst = instances_from_probs(three_class_target(lab), min_size=1)
    # Only objects thinner than the 2-px band between touching nuclei can be lost or merged.
    assert aji(inst, lab) > 0.98


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 3, 4), dtype=np.int32), np.zeros((4, 4), dtype=np.float32)],
)
def test_three_class_target_rejects_non_label_maps(bad):
    with pytest.raises(InputError):
        three_class_target(bad)


@pytest.mark.parametrize(
    "bad",
    [np.full((4, 4), 3, dtype=np.uint8), np.zeros((2, 4, 4), dtype=np.float32), np.zeros((4, 4), dtype=float)],
)
def test_instances_from_probs_rejects_bad_shapes_and_classes(bad):
    with pytest.raises(InputError):
        instances_from_probs(bad)
