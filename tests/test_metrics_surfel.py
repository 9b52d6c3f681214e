"""NSD in its two conventions: boundary voxels (MONAI's default) and surfel-area weighted (DeepMind's, the
challenges'), on cases whose values are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_surface_dice

from medsamkit.core.errors import InputError
from medsamkit.metrics import nsd, surface_dice


def _slab_pair():
    # DeepMind surface-distance's own test: two half-volumes one voxel apart, spacing (2, 1, 1); its published
    # surface Dice at 1 mm is 0.836 (surface_distance_test.py, test_two_cubes_shifted_by_one_pixel).
    truth = np.zeros((100, 100, 100), bool)
    pred = truth.copy()
    truth[:50] = True
    pred[:51] = True
    return pred, truth


def test_surfel_matches_deepmind_value_and_differs_from_voxel():
    pred, truth = _slab_pair()
    surfel = surface_dice(pred, truth, 1.0, (2, 1, 1), convention="surfel")
    voxel = surface_dice(pred, truth, 1.0, (2, 1, 1), convention="voxel")
    assert surfel == pytest.approx(0.836, abs=5e-4)
    assert voxel == pytest.approx(0.7549, abs=5e-4)
    assert abs(surfel - voxel) > 0.05


def test_two_voxels_two_mm_apart():
    # DeepMind's test_on_2_pixels_2mm_away: half of each surface lies within 1 mm.
    truth = np.zeros((20, 20, 20), bool)
    pred = truth.copy()
    truth[5, 6, 7] = True
    pred[5, 6, 9] = True
    assert surface_dice(pred, truth, 1.0, (3, 2, 1), convention="surfel") == pytest.approx(0.5)
    assert surface_dice(pred, truth, 1.0, (3, 2, 1), convention="voxel") == 0.0


def test_voxel_convention_is_monai_default():
    rng = np.random.default_rng(0)
    truth = np.zeros((12, 30, 30), bool)
    truth[3:9, 8:20, 10:22] = True
    pred = truth.copy()
    pred[rng.random(pred.shape) < 0.05] ^= True

    def onehot(m):
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    monai = float(compute_surface_dice(onehot(pred), onehot(truth), [2.0], spacing=[3.0, 1.0, 0.8])[0, 0])
    assert nsd(pred, truth, 2.0, (3.0, 1.0, 0.8)) == pytest.approx(monai, abs=1e-6)


def test_empty_rules_and_bad_convention():
    empty = np.zeros((4, 5, 6), bool)
    one = empty.copy()
    one[1, 2, 3] = True
    assert surface_dice(empty, empty, 2.0, convention="surfel") == 1.0
    assert surface_dice(one, empty, 2.0, convention="surfel") == 0.0
    assert surface_dice(one, one, 2.0, convention="surfel") == 1.0
    with pytest.raises(InputError, match="convention"):
        surface_dice(one, one, 2.0, convention="deepmind")
