"""Tiles around objects (near borders, larger than the tile, small images) and covering grids."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.core.errors import InputError
from medsamkit.core.objects import extract_objects
from medsamkit.core.tiling import grid_windows, tile_for_object, to_window_coords, window_of


@pytest.mark.parametrize(
    ("obj", "image_shape", "tile", "expected"),
    [
        # centred: rows 500..519, cols 300..309 -> start (500+520-256)//2 = 382, (300+310-256)//2 = 177
        ((slice(500, 520), slice(300, 310)), (1000, 1000), 256, (382, 177, 638, 433)),
        # same object as an inclusive box [x0, y0, x1, y1]
        ([300, 500, 309, 519], (1000, 1000), 256, (382, 177, 638, 433)),
        # top-left corner: shifted inside the image
        ([3, 5, 10, 12], (1000, 1000), 256, (0, 0, 256, 256)),
        # bottom-right corner
        ([990, 995, 999, 999], (1000, 1000), 256, (744, 744, 1000, 1000)),
        # near the right border only
        ([995, 400, 999, 409], (1000, 1000), 256, (277, 744, 533, 1000)),
        # larger than the tile: 300 rows x 101 cols -> smallest square (side 300), shifted inside
        ((slice(100, 400), slice(50, 151)), (1000, 1000), 256, (100, 0, 400, 300)),
        # exactly the tile (256 px inclusive box) and one pixel more
        ([0, 0, 255, 255], (1000, 1000), 256, (0, 0, 256, 256)),
        ([0, 0, 256, 10], (1000, 1000), 256, (0, 0, 257, 257)),
        # image smaller than the tile along rows: the window spans all rows
        ([280, 50, 290, 60], (200, 300), 256, (0, 44, 200, 300)),
        # image smaller than the tile on both axes
        ([1, 1, 2, 2], (100, 120, 3), 256, (0, 0, 100, 120)),
    ],
)
def test_tile_for_object(obj, image_shape, tile, expected):
    window = tile_for_object(obj, image_shape, tile)
    assert window == expected


def test_tiles_contain_every_monuseg_like_object_near_borders():
    lab = np.zeros((300, 280), dtype=np.uint16)
    lab[0:12, 0:9] = 1  # top-left
    lab[290:300, 270:280] = 2  # bottom-right
    lab[140:160, 0:5] = 3  # left edge
    lab[0:3, 130:150] = 4  # top edge
    lab[20:290, 100:110] = 5  # taller than the tile
    for obj in extract_objects(lab):
        y0, x0, y1, x1 = tile_for_object(obj, lab.shape, 128)
        assert 0 <= y0 < y1 <= 300 and 0 <= x0 < x1 <= 280
        side = max(128, obj.crop.shape[0], obj.crop.shape[1])
        assert (y1 - y0, x1 - x0) == (min(side, 300), min(side, 280))
        assert obj.mask_in((y0, x0, y1, x1)).sum() == obj.area  # the whole object is inside


def test_tile_for_object_errors():
    with pytest.raises(InputError, match="outside the image"):
        tile_for_object([500, 500, 510, 510], (100, 100))
    with pytest.raises(InputError, match="x1 < x0"):
        tile_for_object([10, 10, 5, 20], (100, 100))
    with pytest.raises(InputError, match="box"):
        tile_for_object([1, 2, 3], (100, 100))
    with pytest.raises(InputError, match="tile size"):
        tile_for_object([1, 2, 3, 4], (100, 100), tile_size=0)


@pytest.mark.parametrize(
    ("shape", "tile", "overlap", "row_starts", "col_starts"),
    [
        ((1000, 1000), 256, 32, [0, 224, 448, 672, 744], [0, 224, 448, 672, 744]),
        ((256, 256), 256, 32, [0], [0]),
        ((480, 257), 256, 32, [0, 224], [0, 1]),
        ((200, 600), 256, 0, [0], [0, 256, 344]),
        ((512, 512), 256, 0, [0, 256], [0, 256]),
    ],
)
def test_grid_windows(shape, tile, overlap, row_starts, col_starts):
    windows = grid_windows(shape, tile, overlap)
    expected = [
        (y0, x0, min(y0 + tile, shape[0]), min(x0 + tile, shape[1])) for y0 in row_starts for x0 in col_starts
    ]
    assert windows == expected
    coverage = np.zeros(shape, dtype=int)
    for y0, x0, y1, x1 in windows:
        coverage[y0:y1, x0:x1] += 1
        # no partial tiles unless the image is smaller than the tile
        assert y1 - y0 == min(tile, shape[0]) and x1 - x0 == min(tile, shape[1])
    assert coverage.min() >= 1


@pytest.mark.parametrize(("tile", "overlap"), [(256, 256), (256, -1), (0, 0)])
def test_grid_windows_bad_overlap(tile, overlap):
    with pytest.raises(InputError):
        grid_windows((100, 100), tile, overlap)


def test_window_of_crops_rows_and_cols():
    image = np.arange(6 * 8 * 3).reshape(6, 8, 3)
    crop = window_of(image, (1, 2, 4, 5))
    assert crop.shape == (3, 3, 3)
    assert crop[0, 0].tolist() == image[1, 2].tolist()
    assert crop[2, 2].tolist() == image[3, 4].tolist()
    with pytest.raises(InputError, match="does not fit"):
        window_of(image, (0, 0, 7, 8))


def test_to_window_coords():
    window = (100, 40, 356, 296)
    box = to_window_coords(np.array([50, 110, 60, 120]), window)
    assert box.tolist() == [10, 10, 20, 20]
    points = to_window_coords(np.array([[40, 100], [41, 102]]), window)
    assert points.tolist() == [[0, 0], [1, 2]]
