"""A volume's views: axis 0 = axial ``array[k]``, axis 1 = coronal ``array[::-1, k, :]``, axis 2 = sagittal
``array[::-1, :, k]`` (z reversed so the top of the volume is at the top of the picture). View pixels are the
unit of every 2D interaction; ``aspect`` (row spacing / column spacing) tells the page how to scale them."""

from __future__ import annotations

import numpy as np

from medsamkit.core.errors import InputError

AXES = ("axial", "coronal", "sagittal")


def check_axis(axis: int, source: str) -> int:
    """``axis`` as an int in 0..2, else InputError (a 400)."""
    if axis not in (0, 1, 2):
        raise InputError(f"{source}: axis must be 0 (axial), 1 (coronal) or 2 (sagittal), got {axis}")
    return int(axis)


def view_stack(array: np.ndarray, axis: int) -> np.ndarray:
    """(N, h, w) numpy view of a (Z, Y, X) array whose ``[k]`` is the view (axis, k) (no copy)."""
    if axis == 0:
        return array
    flipped = array[::-1]
    return flipped.transpose(1, 0, 2) if axis == 1 else flipped.transpose(2, 0, 1)


def view_voxels(shape: tuple[int, int, int], axis: int, k: int, rows: np.ndarray,
                cols: np.ndarray) -> np.ndarray:
    """Flat (C-order) voxel indices of view pixels (rows, cols) of the view (axis, k)."""
    z_count = shape[0]
    if axis == 0:
        zyx = (np.full_like(rows, k), rows, cols)
    elif axis == 1:
        zyx = (z_count - 1 - rows, np.full_like(rows, k), cols)
    else:
        zyx = (z_count - 1 - rows, cols, np.full_like(rows, k))
    return np.ravel_multi_index(zyx, shape)


def aspect(spacing: tuple[float, float, float], axis: int) -> float:
    """Row spacing / column spacing of a view: how much taller than wide a view pixel is."""
    sz, sy, sx = spacing
    return float({0: sy / sx, 1: sz / sx, 2: sz / sy}[axis])
