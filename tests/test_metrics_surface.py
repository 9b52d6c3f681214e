"""HD95 / NSD on shapes whose surface distances are known by hand (lines, squares, planes, a ball)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from medsamkit.core.errors import InputError
from medsamkit.metrics import hd95, nsd, surface_distances


def hline(shape, row, c0, c1):
    out = np.zeros(shape, dtype=bool)
    out[row, c0 : c1 + 1] = True
    return out


def square(size: int, half: int, center: int) -> np.ndarray:
    """Filled square of side 2*half+1 centred at (center, center); its surface is a ring of 8*half pixels."""
    out = np.zeros((size, size), dtype=bool)
    out[center - half : center + half + 1, center - half : center + half + 1] = True
    return out


@pytest.mark.parametrize(
    "pred, truth",
    [
        (np.zeros((5, 5)), np.zeros((5, 5))),
        (np.zeros((3, 4, 5), dtype=np.uint8), np.zeros((3, 4, 5), dtype=np.uint8)),
    ],
)
def test_both_empty(pred, truth):
    assert hd95(pred, truth) == 0.0
    assert nsd(pred, truth) == 1.0


@pytest.mark.parametrize("swap", [False, True])
def test_exactly_one_empty(swap):
    empty, full = np.zeros((6, 6)), square(6, 1, 3)
    a, b = (full, empty) if swap else (empty, full)
    assert hd95(a, b) == math.inf
    assert nsd(a, b, tolerance_mm=100.0) == 0.0


def test_identical_masks():
    a = square(12, 3, 5)
    assert hd95(a, a, spacing=(0.3, 2.0)) == 0.0
    assert nsd(a, a, tolerance_mm=0.0) == 1.0


# Two 1-px lines k rows apart: every surface pixel is exactly k * row_spacing from the other line.
@pytest.mark.parametrize(
    "k, spacing, expected_hd95",
    [(1, None, 1.0), (2, None, 2.0), (3, (1.0, 1.0), 3.0), (2, (2.0, 0.5), 4.0), (3, (0.25, 9.0), 0.75)],
)
def test_parallel_lines(k, spacing, expected_hd95):
    truth = hline((8, 8), 2, 1, 6)
    pred = hline((8, 8), 2 + k, 1, 6)
    assert hd95(pred, truth, spacing=spacing) == pytest.approx(expected_hd95)
    assert nsd(pred, truth, tolerance_mm=expected_hd95, spacing=spacing) == 1.0  # <= tolerance counts
    assert nsd(pred, truth, tolerance_mm=expected_hd95 * 0.99, spacing=spacing) == 0.0


def test_vertical_lines_use_column_spacing():
    truth, pred = hline((8, 8), 2, 1, 6).T, hline((8, 8), 5, 1, 6).T
    assert hd95(pred, truth, spacing=(2.0, 0.5)) == pytest.approx(1.5)


# Concentric filled squares, half-sides a and a+k. Inner ring (8a px) -> outer ring: all k.
# Outer ring (8(a+k) px) -> inner ring: k, except near each corner: k=1 -> 1 px at sqrt(2) per corner;
# k=2 -> 2 px at sqrt(5) and 1 px at sqrt(8) per corner.
# a=20, k=1: 4/168 values above 1 -> 95th percentile (index 0.95*167 = 158.65) is 1.
#            NSD(1) = (160 + 164) / (160 + 168) = 81/82.
# a=20, k=2: sorted outer distances: 164 x 2, 8 x sqrt(5), 4 x sqrt(8); index 0.95*175 = 166.25 -> sqrt(5).
#            NSD(2) = (160 + 164) / (160 + 176) = 27/28.
@pytest.mark.parametrize(
    "k, expected_hd95, expected_max, tolerance, expected_nsd",
    [
        (1, 1.0, math.sqrt(2), 1.0, Fraction(81, 82)),
        (1, 1.0, math.sqrt(2), 1.5, Fraction(1)),
        (2, math.sqrt(5), math.sqrt(8), 2.0, Fraction(27, 28)),
        (2, math.sqrt(5), math.sqrt(8), 0.5, Fraction(0)),
    ],
)
def test_concentric_squares(k, expected_hd95, expected_max, tolerance, expected_nsd):
    inner, outer = square(50, 20, 25), square(50, 20 + k, 25)
    to_truth, to_pred = surface_distances(outer, inner)
    assert (to_truth.size, to_pred.size) == (8 * (20 + k), 160)
    assert np.all(to_pred == k)
    assert to_truth.max() == pytest.approx(expected_max)
    assert hd95(outer, inner) == pytest.approx(expected_hd95)
    assert hd95(inner, outer) == pytest.approx(expected_hd95)
    assert nsd(outer, inner, tolerance_mm=tolerance) == pytest.approx(float(expected_nsd))


def test_square_touching_border_has_surface_there():
    # The whole border of a full image is surface. The 9x9 square in its corner shares two sides with it;
    # its far sides are 1 px from the image border and the image's far corner is sqrt(2) from its own.
    full = np.ones((10, 10), dtype=bool)
    inner = full.copy()
    inner[9, :] = False
    inner[:, 9] = False
    to_truth, to_pred = surface_distances(inner, full)
    assert (to_truth.size, to_pred.size) == (9 * 4 - 4, 10 * 4 - 4)
    assert to_truth.max() == pytest.approx(1.0)
    assert to_pred.max() == pytest.approx(math.sqrt(2))
    assert np.count_nonzero(to_pred == 0) == 9 + 9 - 1


@pytest.mark.parametrize(
    "spacing, tolerance, expected_hd95, expected_nsd",
    [((2.5, 0.7, 0.7), 2.0, 2.5, 0.0), ((2.5, 0.7, 0.7), 2.5, 2.5, 1.0), (None, 1.0, 1.0, 1.0)],
)
def test_planes_one_slice_apart_3d(spacing, tolerance, expected_hd95, expected_nsd):
    truth = np.zeros((6, 8, 8), dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[1, 1:7, 1:7] = 1
    pred[2, 1:7, 1:7] = 1
    assert hd95(pred, truth, spacing=spacing) == pytest.approx(expected_hd95)
    assert nsd(pred, truth, tolerance_mm=tolerance, spacing=spacing) == expected_nsd


def ball(shape, center_mm, radius_mm, spacing):
    grid = np.indices(shape).astype(float)
    d2 = sum(((g * s) - c) ** 2 for g, s, c in zip(grid, spacing, center_mm))
    return d2 <= radius_mm**2


def test_ball_shifted_one_slice_with_anisotropic_spacing():
    # Translating a ball by one slice moves every surface voxel by exactly the slice spacing, so no surface
    # distance exceeds it, and the top cap (a voxel row no slice of the truth reaches) is exactly that far.
    spacing = (2.0, 1.0, 1.0)
    truth = ball((12, 21, 21), (10.0, 10.0, 10.0), 8.0, spacing)
    pred = np.roll(truth, 1, axis=0)
    to_truth, to_pred = surface_distances(pred, truth, spacing=spacing)
    assert max(to_truth.max(), to_pred.max()) == pytest.approx(2.0)
    assert 0.0 < hd95(pred, truth, spacing=spacing) <= 2.0
    assert nsd(pred, truth, tolerance_mm=2.0, spacing=spacing) == 1.0
    assert nsd(pred, truth, tolerance_mm=1.9, spacing=spacing) < 1.0
    # Ignoring the spacing would make the same shift look like 1 mm.
    assert nsd(pred, truth, tolerance_mm=1.0) == 1.0
    assert max(surface_distances(pred, truth)[0].max(), surface_distances(pred, truth)[1].max()) == 1.0


def test_ball_radius_difference_is_the_surface_distance():
    spacing = (2.0, 1.0, 1.0)
    small = ball((13, 25, 25), (12.0, 12.0, 12.0), 6.0, spacing)
    large = ball((13, 25, 25), (12.0, 12.0, 12.0), 9.0, spacing)
    # Discretisation moves each surface by under one voxel diagonal; the true gap is 3 mm.
    assert 2.0 <= hd95(large, small, spacing=spacing) <= 4.0
    assert nsd(large, small, tolerance_mm=5.0, spacing=spacing) == 1.0
    assert nsd(large, small, tolerance_mm=1.0, spacing=spacing) < 0.2


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_matches_monai_on_random_blobs():
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice
    from scipy import ndimage

    rng = np.random.default_rng(0)
    spacing = (0.7, 1.3)
    for _ in range(3):
        p = ndimage.binary_dilation(rng.random((40, 50)) > 0.97, iterations=3)
        t = ndimage.binary_dilation(rng.random((40, 50)) > 0.97, iterations=3)
        pt, tt = torch.tensor(p)[None, None].float(), torch.tensor(t)[None, None].float()
        ref_hd = compute_hausdorff_distance(pt, tt, percentile=95, spacing=spacing).item()
        ref_nsd = compute_surface_dice(
            pt, tt, class_thresholds=[1.5], spacing=spacing, include_background=True
        ).item()
        assert hd95(p, t, spacing=spacing) == pytest.approx(ref_hd, rel=1e-5)
        assert nsd(p, t, tolerance_mm=1.5, spacing=spacing) == pytest.approx(ref_nsd, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spacing": (1.0, 1.0, 1.0)}, "3 values; the masks have 2 axes"),
        ({"spacing": (1.0, -2.0)}, "positive and finite"),
        ({"spacing": (1.0, float("nan"))}, "positive and finite"),
    ],
)
def test_bad_spacing(kwargs, match):
    a = square(6, 1, 3)
    with pytest.raises(InputError, match=match):
        hd95(a, a, **kwargs)
    with pytest.raises(InputError, match=match):
        nsd(a, a, **kwargs)


def test_bad_inputs():
    with pytest.raises(InputError, match=r"prediction shape \(4, 4\) does not match truth shape \(4, 5\)"):
        hd95(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(InputError, match="NaN"):
        nsd(np.full((3, 3), np.nan), np.zeros((3, 3)))
    with pytest.raises(InputError, match="tolerance"):
        nsd(np.ones((3, 3)), np.ones((3, 3)), tolerance_mm=-1.0)
