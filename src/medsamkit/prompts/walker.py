"""A seeded random walker on a view's grey levels (scikit-image's ``random_walker``): the random-walker baseline's
solver (``evaluation.baseline``) and the boundary refinement of corrective clicks on small objects without a box
(``walker_refine``, used by ``prompts.clicks``).

Edge weights use the intensity statistics of the whole view (grey levels scaled by its min/max, gradients by its
standard deviation, as skimage does for the array it is given), so a crop gives the answer of the uncropped walker.
The system is solved directly (sparse LU, skimage ``mode="bf"``). Crops larger than ``solve_side`` px are solved on
a grid coarsened by an integer factor: block means of the grey levels, a block is background if all its pixels are
background seeds, else object if any pixel is an object seed; the object probability is resized back to the crop
and the full-resolution seeds are imposed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import random_walker
from skimage.transform import downscale_local_mean, resize

BETA = 130.0  # skimage's default edge sharpness, as the baseline uses it
SOLVE_SIDE = 128  # longest side of the grid the walker solves on; larger crops are coarsened


def grey(image: np.ndarray) -> np.ndarray:
    """The view's grey levels (channel mean), float32."""
    return image.astype(np.float32).mean(axis=-1) if image.ndim == 3 else image.astype(np.float32)


def intensity_levels(image: np.ndarray) -> tuple[float, float, float]:
    """(min, max, standard deviation after min/max scaling) of a view's grey levels: the walker's weights."""
    g = grey(image)
    lo, hi = float(g.min()), float(g.max())
    return lo, hi, float(((g - lo) / max(hi - lo, 1e-8)).std())


def walker_data(crop: np.ndarray, levels: tuple[float, float, float]) -> np.ndarray:
    """The crop's grey levels scaled so that skimage (which divides by the std of what it gets) weighs its
    edges as it would on the whole view."""
    lo, hi, std = levels
    x = (grey(crop) - lo) / max(hi - lo, 1e-8)
    own = float(x.std())
    return x * (own / std) if own > 1e-8 and std > 1e-8 else x


def _coarse_seeds(seeds: np.ndarray, f: int) -> np.ndarray:
    """Seeds on blocks of f x f: background where the whole block is, else object where any pixel is."""
    h, w = -(-seeds.shape[0] // f) * f, -(-seeds.shape[1] // f) * f
    padded = np.pad(seeds, ((0, h - seeds.shape[0]), (0, w - seeds.shape[1])), mode="edge")
    blocks = padded.reshape(h // f, f, w // f, f).transpose(0, 2, 1, 3).reshape(h // f, w // f, -1)
    out = np.zeros(blocks.shape[:2], np.int32)
    out[(blocks == 1).any(-1)] = 1
    out[(blocks == 2).all(-1)] = 2
    return out


def solve(data: np.ndarray, seeds: np.ndarray, beta: float = BETA, solve_side: int | None = SOLVE_SIDE) -> np.ndarray:
    """Object mask of a crop from seed labels (1 object, 2 background, 0 unknown): the walker at full resolution,
    or on a coarsened grid for crops longer than ``solve_side`` (None: always full resolution)."""
    f = 1 if solve_side is None else -(-max(seeds.shape) // solve_side)
    coarse = _coarse_seeds(seeds, f) if f > 1 else seeds
    if f == 1 or not ((coarse == 1).any() and (coarse == 2).any()):
        return random_walker(data, seeds, beta=beta, mode="bf") == 1
    grid = downscale_local_mean(np.pad(data, ((0, -data.shape[0] % f), (0, -data.shape[1] % f)), mode="edge"), f)
    prob = random_walker(grid, coarse, beta=beta, mode="bf", return_full_prob=True)[0]
    fine = resize(prob, (grid.shape[0] * f, grid.shape[1] * f), order=1)[: seeds.shape[0], : seeds.shape[1]]
    return ((fine >= 0.5) | (seeds == 1)) & (seeds != 2)


def walker_refine(mask: np.ndarray, points: np.ndarray, labels: np.ndarray, image: np.ndarray,
                  band: float, levels: tuple[float, float, float] | None = None) -> np.ndarray:
    """``mask`` with its boundary placed by the walker on ``image``'s grey levels: the mask eroded by ``band`` x
    its radius (at least 2 px) and 3x3 squares at positive clicks are object, everything beyond the mask dilated
    as far and 3x3 squares at negative clicks background; the walker decides the band between, in a crop around
    it. The mask itself where there is nothing to decide. ``levels``: the image's ``intensity_levels`` (computed
    when not given)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    h, w = mask.shape
    width = max(2, int(round(band * np.sqrt(np.count_nonzero(mask) / np.pi))))
    inner = ndimage.binary_erosion(mask, iterations=width)
    outer = ~ndimage.binary_dilation(mask, iterations=width)
    ys, xs = np.nonzero(ndimage.binary_dilation(mask, iterations=2 * width))
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    cols = np.clip(pts[:, 0].astype(int), 0, w - 1)
    rows = np.clip(pts[:, 1].astype(int), 0, h - 1)
    y0, y1 = max(min(ys.min(), *rows) - 2, 0), min(max(ys.max(), *rows) + 3, h)
    x0, x1 = max(min(xs.min(), *cols) - 2, 0), min(max(xs.max(), *cols) + 3, w)
    seeds = np.zeros((y1 - y0, x1 - x0), np.int32)
    seeds[inner[y0:y1, x0:x1]] = 1
    seeds[outer[y0:y1, x0:x1]] = 2
    for r, c, lab in zip(rows - y0, cols - x0, np.asarray(labels)):
        seeds[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = 1 if lab == 1 else 2
    if not ((seeds == 1).any() and (seeds == 2).any()):
        return mask
    out = mask.copy()
    levels = intensity_levels(image) if levels is None else levels
    out[y0:y1, x0:x1] = solve(walker_data(image[y0:y1, x0:x1], levels), seeds)
    return out
