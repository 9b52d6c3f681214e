"""CT windows and MR percentile clipping: hand-computed values at and between the window edges."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.core.errors import InputError
from medsamkit.io.windowing import WINDOWS, apply_window, percentile_clip, range_window, window_by_name


@pytest.mark.parametrize(
    ("level", "width", "hu", "expected"),
    [
        # soft tissue: [-160, 240]
        (40, 400, -1000, 0.0),
        (40, 400, -160, 0.0),
        (40, 400, -60, 0.25),
        (40, 400, 40, 0.5),
        (40, 400, 140, 0.75),
        (40, 400, 240, 1.0),
        (40, 400, 3000, 1.0),
        # lung: [-1350, 150]
        (-600, 1500, -1350, 0.0),
        (-600, 1500, -975, 0.25),
        (-600, 1500, -600, 0.5),
        (-600, 1500, 150, 1.0),
        # brain: [0, 80]
        (40, 80, 20, 0.25),
        (40, 80, 100, 1.0),
    ],
)
def test_apply_window_values(level: float, width: float, hu: float, expected: float) -> None:
    out = apply_window(np.array([hu], dtype=np.int16), level, width)
    assert out.dtype == np.float32
    assert out[0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("name", "level", "width"),
    [
        ("lung", -600, 1500),
        ("mediastinum", 40, 400),
        ("soft_tissue", 40, 400),
        ("abdomen", 40, 400),
        ("bone", 400, 1800),
        ("brain", 40, 80),
    ],
)
def test_window_presets(name: str, level: float, width: float) -> None:
    assert WINDOWS[name] == (level, width)
    hu = np.array([level - width / 2, level, level + width / 2])
    np.testing.assert_allclose(window_by_name(hu, name), [0.0, 0.5, 1.0], atol=1e-6)


def test_window_by_name_is_forgiving_about_case_and_separator() -> None:
    np.testing.assert_allclose(window_by_name(np.array([40.0]), "Soft-Tissue"), [0.5])


def test_unknown_window_lists_valid_names() -> None:
    with pytest.raises(InputError, match=r"unknown CT window 'liver'.*lung, mediastinum.*brain"):
        window_by_name(np.zeros(3), "liver")


@pytest.mark.parametrize(
    ("hu", "expected"),
    [(-2000, 0.0), (-1000, 0.0), (-650, 0.25), (-300, 0.5), (50, 0.75), (400, 1.0), (1000, 1.0)],
)
def test_range_window_lung_ct_range(hu: float, expected: float) -> None:
    # docs/facts.md's [-1000, 400] HU window for the lung CT calibration
    assert range_window(np.array([hu], dtype=np.float32), -1000, 400)[0] == pytest.approx(expected)


def test_window_keeps_shape_and_clips_a_volume() -> None:
    volume = np.full((3, 4, 5), 5000.0)
    volume[1] = -5000.0
    out = apply_window(volume, 40, 400)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    assert out[0].min() == 1.0 and out[1].max() == 0.0


@pytest.mark.parametrize(("lo", "hi"), [(0, 0), (10, -10)])
def test_empty_range_is_rejected(lo: float, hi: float) -> None:
    with pytest.raises(InputError, match="greater than lower bound"):
        range_window(np.zeros(2), lo, hi)


@pytest.mark.parametrize("width", [0, -10])
def test_non_positive_width_is_rejected(width: float) -> None:
    with pytest.raises(InputError, match="width must be positive"):
        apply_window(np.zeros(2), 40, width)


@pytest.mark.parametrize(
    ("value", "expected"),
    # 0..100: the 10th / 90th percentiles are exactly 10 and 90, so (v - 10) / 80
    [(0, 0.0), (10, 0.0), (30, 0.25), (50, 0.5), (70, 0.75), (90, 1.0), (100, 1.0)],
)
def test_percentile_clip_values(value: int, expected: float) -> None:
    img = np.arange(101, dtype=np.float64).reshape(1, 101)
    out = percentile_clip(img, lo=10, hi=90)
    assert out.dtype == np.float32
    assert out[0, value] == pytest.approx(expected, abs=1e-6)


def test_percentile_clip_within_mask() -> None:
    img = np.arange(101, dtype=np.float32)
    mask = img <= 50  # percentiles 0 / 100 of 0..50 are 0 and 50
    out = percentile_clip(img, lo=0, hi=100, mask=mask)
    assert out[25] == pytest.approx(0.5)
    assert out[50] == pytest.approx(1.0)
    assert out[100] == pytest.approx(1.0)  # outside the mask, clipped


def test_percentile_clip_default_ignores_outliers() -> None:
    img = np.zeros(1000, dtype=np.float32)
    img[:999] = np.linspace(0, 1, 999)
    img[999] = 1e6  # one hot pixel: above the 99.5th percentile, so it does not squash the rest
    out = percentile_clip(img)
    assert out[999] == 1.0
    assert out[499] == pytest.approx(0.5, abs=0.01)


def test_percentile_clip_constant_image_is_zero() -> None:
    out = percentile_clip(np.full((4, 4), 7.0))
    assert out.dtype == np.float32 and not out.any()


def test_percentile_clip_bad_inputs() -> None:
    with pytest.raises(InputError, match="does not match image shape"):
        percentile_clip(np.zeros((4, 4)), mask=np.ones((4, 5), bool))
    with pytest.raises(InputError, match="mask .* is empty"):
        percentile_clip(np.zeros((4, 4)), mask=np.zeros((4, 4), bool))
    with pytest.raises(InputError, match="lo < hi"):
        percentile_clip(np.zeros((4, 4)), lo=60, hi=40)


# --- --window on builtin volumes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lung_default():
    """pat_1 of builtin:lung-gtv opened with the default window, and its HU volume."""
    import importlib.util

    if importlib.util.find_spec("cerr") is None:
        pytest.skip("pycerr (builtin:lung-gtv data) not installed")
    from medsamkit.io.datasets import open_dataset

    case = next(open_dataset("builtin:lung-gtv").items())
    return case, case.meta["volume"].array


def _first_case(window: str):
    from medsamkit.io.datasets import open_dataset

    return next(open_dataset("builtin:lung-gtv", window=window).items())


def test_window_name_reaches_builtin_lung_volume(lung_default) -> None:
    from medsamkit.io.volume_data import to_unit_range

    default, hu = lung_default
    np.testing.assert_array_equal(default.image, range_window(hu, -1000.0, 400.0))  # the builtin's lung window
    bone = _first_case("bone")
    assert bone.name == default.name
    np.testing.assert_array_equal(bone.image, window_by_name(hu, "bone"))
    np.testing.assert_array_equal(bone.image, to_unit_range(default.meta["volume"], "bone"))
    # the served 2D slices carry the window too
    bone_slice, default_slice = next(bone.slices()), next(default.slices())
    assert bone_slice.name == default_slice.name
    assert np.abs(bone_slice.image - default_slice.image).max() > 0.1


def test_window_lo_hi_string_reaches_builtin_lung_volume(lung_default) -> None:
    default, hu = lung_default
    same = _first_case("-1000,400")
    np.testing.assert_array_equal(same.image, default.image)
    narrow = _first_case("-200, 300")
    np.testing.assert_array_equal(narrow.image, range_window(hu, -200.0, 300.0))
    assert not np.array_equal(narrow.image, default.image)
    with pytest.raises(InputError, match="must be a name"):
        _first_case("-200,x")
