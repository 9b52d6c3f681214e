"""Views of objects on large images: the whole image, a native-resolution tile around one object, or a grid.

A window is ``(y0, x0, y1, x1)`` with exclusive ends, in full-image pixel coordinates.

The view rule (``tile_size_for`` + ``plan_tiles``, shared by evaluate, embed, finetune): an explicit tile
size tiles every object; 0 never tiles; auto (None) gives each object the whole image resized to the model
input, unless its longer side at model scale (``side * input_size / max(H, W)``) is below
``WHOLE_VIEW_MIN_SIDE``: then a native-resolution tile containing it with context of half its side on every
side. Images at most twice the model input always keep the whole view. The threshold was measured with
``benchmarks/view_rule.py`` (results in ``benchmarks/results/view_rule.json``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.core.objects import ImageObject, Window


def _object_extent(
    obj: ImageObject | Sequence[slice] | Sequence[float] | np.ndarray,
) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) with exclusive ends from an ImageObject, (rows, cols) slices or a box."""
    if isinstance(obj, ImageObject):
        obj = obj.slices
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(s, slice) for s in obj):
        rows, cols = obj
        return int(rows.start or 0), int(cols.start or 0), int(rows.stop), int(cols.stop)
    box = np.asarray(obj, dtype=np.float64).reshape(-1)
    if box.size != 4 or not np.isfinite(box).all():
        raise InputError(f"object must be a box [x0, y0, x1, y1] or (rows, cols) slices, got {obj!r}")
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        raise InputError(f"box {box.tolist()} has x1 < x0 or y1 < y0")
    # Box maxima are inclusive pixel indices (MedSAM convention).
    return int(np.floor(y0)), int(np.floor(x0)), int(np.ceil(y1)) + 1, int(np.ceil(x1)) + 1


def _image_size(image_shape: Sequence[int]) -> tuple[int, int]:
    if len(image_shape) < 2 or image_shape[0] < 1 or image_shape[1] < 1:
        raise InputError(
            f"image shape must be (rows, cols, ...) with positive sizes, got {tuple(image_shape)}"
        )
    return int(image_shape[0]), int(image_shape[1])


def _centred_span(lo: int, hi: int, size: int, limit: int) -> tuple[int, int]:
    """A span of ``size`` (<= limit) centred on [lo, hi), shifted inside [0, limit)."""
    start = (lo + hi - size) // 2
    start = min(max(start, 0), limit - size)
    return start, start + size


def tile_for_object(
    obj: ImageObject | Sequence[slice] | Sequence[float] | np.ndarray,
    image_shape: Sequence[int],
    tile_size: int = 256,
) -> Window:
    """A ``tile_size`` square window containing the whole object, centred on it and shifted inside the image.

    The window is smaller only along an axis where the image is smaller than the tile. An object larger
    than the tile gets the smallest square window containing it (side = its longer side), likewise
    shifted inside and clipped to the image.
    """
    if tile_size < 1:
        raise InputError(f"tile size must be >= 1, got {tile_size}")
    rows, cols = _image_size(image_shape)
    r0, c0, r1, c1 = _object_extent(obj)
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, rows), min(c1, cols)
    if r0 >= r1 or c0 >= c1:
        raise InputError(f"object {obj!r} lies outside the image of shape {(rows, cols)}")
    side = max(tile_size, r1 - r0, c1 - c0)
    y0, y1 = _centred_span(r0, r1, min(side, rows), rows)
    x0, x1 = _centred_span(c0, c1, min(side, cols), cols)
    return y0, x0, y1, x1


def _grid_starts(length: int, tile_size: int, stride: int) -> list[int]:
    if length <= tile_size:
        return [0]
    starts = list(range(0, length - tile_size, stride))
    starts.append(length - tile_size)
    return starts


def grid_windows(image_shape: Sequence[int], tile_size: int = 256, overlap: int = 32) -> list[Window]:
    """Row-major windows of ``tile_size`` covering the image, neighbours overlapping by at least ``overlap``.

    The last row and column of windows are aligned to the image border, so no window is partial unless the
    image itself is smaller than the tile along that axis (then the window spans that axis once).
    """
    if tile_size < 1:
        raise InputError(f"tile size must be >= 1, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise InputError(f"tile overlap must be in [0, {tile_size}), got {overlap}")
    rows, cols = _image_size(image_shape)
    stride = tile_size - overlap
    windows: list[Window] = []
    for y0 in _grid_starts(rows, tile_size, stride):
        for x0 in _grid_starts(cols, tile_size, stride):
            windows.append((y0, x0, min(y0 + tile_size, rows), min(x0 + tile_size, cols)))
    return windows


def window_of(array: np.ndarray, window: Window) -> np.ndarray:
    """The part of ``array`` (rows, cols, ...) inside ``window``; a view, not a copy."""
    y0, x0, y1, x1 = (int(v) for v in window)
    if array.ndim < 2:
        raise InputError(f"cannot crop an array of shape {array.shape}: needs (rows, cols, ...)")
    if not (0 <= y0 < y1 <= array.shape[0] and 0 <= x0 < x1 <= array.shape[1]):
        raise InputError(f"window {tuple(window)} does not fit an image of shape {array.shape[:2]}")
    return array[y0:y1, x0:x1]


def to_window_coords(box: np.ndarray, window: Window) -> np.ndarray:
    """A box ``[x0, y0, x1, y1]`` (or points ``(N, 2)`` x, y) shifted from image to window coordinates."""
    arr = np.asarray(box, dtype=np.float32)
    offset = np.array([window[1], window[0]], dtype=np.float32)
    return (arr.reshape(-1, 2) - offset).reshape(arr.shape)


# Longer side, in px at model scale, from which an object keeps the whole-image view under the auto rule.
# Measured (benchmarks/view_rule.py): MoNuSeg nuclei (4-15 px at model scale) need native tiles, GlaS glands
# (median 46 px) lose Dice in tiles; this value sits between the two.
WHOLE_VIEW_MIN_SIDE = 16.0


class AutoTile(int):
    """The tile size the auto rule chose for an image: ``plan_tiles`` then views each object whole-image
    unless it is smaller than ``min_side`` px at model scale (then a native tile of this size, with context)."""

    input_size: int
    min_side: float

    def __new__(cls, size: int, input_size: int, min_side: float = WHOLE_VIEW_MIN_SIDE) -> AutoTile:
        tile = super().__new__(cls, size)
        tile.input_size, tile.min_side = int(input_size), float(min_side)
        return tile


def model_scale_side(obj: ImageObject, shape: tuple[int, int], input_size: int) -> float:
    """The object's longer side in px once the whole image is resized to the model input."""
    rows, cols = obj.slices
    return max(rows.stop - rows.start, cols.stop - cols.start) * input_size / max(shape[0], shape[1])


def tile_size_for(shape: tuple[int, int], tile_size: int | None, input_size: int,
                  min_side: float = WHOLE_VIEW_MIN_SIDE) -> int:
    """Tile size to use for an image: the requested one (0 = never tile); None = auto, i.e. the whole image
    (0) up to twice the model input, else an ``AutoTile`` (per-object view, see the module docstring)."""
    if tile_size is not None:
        return tile_size
    return AutoTile(input_size, input_size, min_side) if max(shape) > 2 * input_size else 0


def _grid_tile(obj: ImageObject, shape: tuple[int, int], grid: list[Window], margin: int, tile: int,
               context: bool) -> Window:
    """The grid tile nearest to the object containing its box grown by ``margin``, else a tile of its own
    centred on it: side ``tile``, or the object's (``context``: the grown box's) longer side if larger."""
    rows, cols = obj.slices
    r0, c0 = max(rows.start - margin, 0), max(cols.start - margin, 0)
    r1, c1 = min(rows.stop + margin, shape[0]), min(cols.stop + margin, shape[1])
    starts = np.array(grid)
    fits = (starts[:, 0] <= r0) & (starts[:, 1] <= c0) & (starts[:, 2] >= r1) & (starts[:, 3] >= c1)
    if not fits.any():
        return tile_for_object((slice(r0, r1), slice(c0, c1)) if context else obj, shape, tile)
    centres = (starts[:, :2] + starts[:, 2:]) / 2
    d = np.hypot(centres[:, 0] - (r0 + r1) / 2, centres[:, 1] - (c0 + c1) / 2)
    d[~fits] = np.inf
    return tuple(int(v) for v in grid[int(d.argmin())])


def plan_tiles(objects: list[ImageObject], shape: tuple[int, int], tile: int, overlap: int,
               margin: int = 8) -> dict[Window, list[ImageObject]]:
    """The view of each object: {window: objects}. An explicit tile: the grid tile containing the object's box
    grown by ``margin`` (else a tile of its own); an ``AutoTile``: the whole image for objects of at least
    ``tile.min_side`` px at model scale, the others a tile containing them with half their side as context."""
    whole = (0, 0, int(shape[0]), int(shape[1]))
    if tile <= 0 or max(shape) <= tile:
        return {whole: list(objects)}
    grid = grid_windows(shape, tile, min(overlap, tile - 1))
    plan: dict[Window, list[ImageObject]] = defaultdict(list)
    for obj in objects:
        if isinstance(tile, AutoTile):
            if model_scale_side(obj, shape, tile.input_size) >= tile.min_side:
                plan[whole].append(obj)
                continue
            rows, cols = obj.slices
            grow = max(margin, max(rows.stop - rows.start, cols.stop - cols.start) // 2)
            plan[_grid_tile(obj, shape, grid, grow, tile, context=True)].append(obj)
        else:
            plan[_grid_tile(obj, shape, grid, margin, tile, context=False)].append(obj)
    return dict(plan)
