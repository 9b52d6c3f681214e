"""Classical interactive baseline: scikit-image's random walker seeded from the same simulated prompts.

The Mazurowski study compared SAM with RITM, whose weights are not available offline; a seeded random walker
fills that row. Seeds: positive points -> object; negative points -> background; a box gives a small disk
at its centre as object seeds and everything outside it as background. Points alone get the border of their
neighbourhood (``margin`` px around them) as background.

The walker runs on a crop around the prompt (``baseline_crop``): a box grown by ``BOX_RING`` px (a
background ring: pixels farther out are background seeds too), or the points' bounding box grown by
``margin`` (the neighbourhood whose border is the background seed). Pixels outside the crop are background.
Edge weights use the intensity statistics of the whole view (grey levels scaled by its min/max, gradients
by its standard deviation, as skimage does for the array it is given), so for a box the crop gives the
answer of the uncropped walker. The system is solved directly (sparse LU, skimage ``mode="bf"``), which
matches the conjugate-gradient solver it replaced to within that solver's tolerance without its slow
convergence on large objects.

Crops up to ``SOLVE_SIDE`` px (nuclei, lung tumours) are solved at full resolution. Larger ones (GlaS
glands are 100-500 px; the direct solve grows faster than the area) are solved on a grid coarsened by an
integer factor: block means of the grey levels, a block is background if all its pixels are background
seeds, else object if any pixel is an object seed; the object probability is resized back to the crop and
the full-resolution seeds are imposed. The click session (``medsamkit.prompts``) is the model's, so seeds
and clicks are reproducible.
"""

from __future__ import annotations

import numpy as np

from medsamkit.core.objects import ImageObject
from medsamkit.prompts import Prompt, PromptMode
from medsamkit.prompts.objects import ObjectRun, Window, run_mode
from medsamkit.prompts.walker import BETA, SOLVE_SIDE, intensity_levels, solve, walker_data

# Width of the background ring kept around a box prompt.
BOX_RING = 8


def baseline_crop(prompt: Prompt, shape: tuple[int, int], margin: int = 32) -> Window:
    """The window ``(y0, x0, y1, x1)`` the walker runs in: box + BOX_RING, or the points' extent + margin."""
    h, w = int(shape[0]), int(shape[1])
    xs = list(prompt.points[:, 0]) + ([prompt.box[0], prompt.box[2]] if prompt.box is not None else [])
    ys = list(prompt.points[:, 1]) + ([prompt.box[1], prompt.box[3]] if prompt.box is not None else [])
    grow = BOX_RING if prompt.box is not None else margin
    x0, x1 = max(int(min(xs)) - grow, 0), min(int(max(xs)) + grow + 1, w)
    y0, y1 = max(int(min(ys)) - grow, 0), min(int(max(ys)) + grow + 1, h)
    return y0, x0, y1, x1


def _seeds(prompt: Prompt, crop: Window) -> np.ndarray:
    """Seed labels of the crop: 1 object, 2 background, 0 unknown."""
    y0, x0, y1, x1 = crop
    seeds = np.zeros((y1 - y0, x1 - x0), dtype=np.int32)
    if prompt.box is not None:
        bx0, by0, bx1, by1 = prompt.box - np.array([x0, y0, x0, y0], dtype=np.float32)
        seeds[:] = 2
        seeds[max(int(by0), 0) : int(by1) + 1, max(int(bx0), 0) : int(bx1) + 1] = 0
        cy, cx = (by0 + by1) / 2, (bx0 + bx1) / 2
        r = max(min(bx1 - bx0, by1 - by0) / 6, 1.0)
        yy, xx = np.ogrid[: seeds.shape[0], : seeds.shape[1]]
        seeds[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    else:
        seeds[0, :] = seeds[-1, :] = seeds[:, 0] = seeds[:, -1] = 2
    for (px, py), lab in zip(prompt.points, prompt.labels):
        seeds[int(py) - y0, int(px) - x0] = 1 if lab == 1 else 2
    return seeds


def random_walker_segment(image: np.ndarray, prompt: Prompt, margin: int = 32, beta: float = BETA,
                          crop: Window | None = None, levels: tuple[float, float, float] | None = None,
                          solve_side: int | None = SOLVE_SIDE) -> np.ndarray:
    """Binary mask (image size) from a seeded random walker run inside ``crop`` (default: ``baseline_crop``);
    ``levels``: the image's ``intensity_levels`` (computed when not given); ``solve_side=None``: full resolution."""
    h, w = image.shape[:2]
    crop = baseline_crop(prompt, (h, w), margin) if crop is None else crop
    y0, x0, y1, x1 = crop
    seeds = _seeds(prompt, crop)
    out = np.zeros((h, w), dtype=bool)
    if not (seeds == 1).any():
        return out
    if not (seeds == 2).any() or seeds.size < 4:
        out[y0:y1, x0:x1] = True
        return out
    levels = intensity_levels(image) if levels is None else levels
    out[y0:y1, x0:x1] = solve(walker_data(image[y0:y1, x0:x1], levels), seeds, beta, solve_side)
    return out


def run_mode_baseline(image: np.ndarray, objects: list[ImageObject], window: Window, mode: PromptMode,
                      seed: int, case_key: int, margin: int) -> list[ObjectRun]:
    """The same prompt mode (same seeds, same click session) through the random-walker baseline."""

    levels = intensity_levels(image)

    def predict(prompts: list[Prompt], mask_input: np.ndarray | None):
        masks = np.stack([random_walker_segment(image, p, margin, levels=levels) for p in prompts])
        return masks, np.full(len(prompts), np.nan), None

    return run_mode(objects, window, mode, seed, case_key, predict)
