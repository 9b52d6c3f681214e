"""Classical interactive baseline: scikit-image's random walker seeded from the same simulated prompts.

The Mazurowski study compared SAM with RITM, whose weights are not available offline; a seeded random walker
fills that row. Seeds: positive points -> object; negative points -> background; a box gives a small disk
at its centre as object seeds and the ring outside it (inside a margin) as background seeds. Points alone
get the border of a window around them (margin px) as background. It runs inside that window only.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import random_walker

from medsamkit.core.objects import ImageObject
from medsamkit.prompts import Prompt, PromptMode
from medsamkit.prompts.objects import ObjectRun, Window, run_mode


def _grey(image: np.ndarray) -> np.ndarray:
    g = image.astype(np.float32).mean(axis=-1) if image.ndim == 3 else image.astype(np.float32)
    lo, hi = float(g.min()), float(g.max())
    return (g - lo) / max(hi - lo, 1e-8)


def random_walker_segment(image: np.ndarray, prompt: Prompt, margin: int = 32, beta: float = 130.0) -> np.ndarray:
    """Binary mask (image size) from a seeded random walker restricted to a window around the prompt."""
    h, w = image.shape[:2]
    xs = list(prompt.points[:, 0]) + ([prompt.box[0], prompt.box[2]] if prompt.box is not None else [])
    ys = list(prompt.points[:, 1]) + ([prompt.box[1], prompt.box[3]] if prompt.box is not None else [])
    grow = 8 if prompt.box is not None else margin
    x0, x1 = max(int(min(xs)) - grow, 0), min(int(max(xs)) + grow + 1, w)
    y0, y1 = max(int(min(ys)) - grow, 0), min(int(max(ys)) + grow + 1, h)
    seeds = np.zeros((y1 - y0, x1 - x0), dtype=np.int32)
    if prompt.box is not None:
        bx0, by0, bx1, by1 = prompt.box - np.array([x0, y0, x0, y0], dtype=np.float32)
        seeds[:] = 2
        seeds[int(by0) : int(by1) + 1, int(bx0) : int(bx1) + 1] = 0
        cy, cx = (by0 + by1) / 2, (bx0 + bx1) / 2
        r = max(min(bx1 - bx0, by1 - by0) / 6, 1.0)
        yy, xx = np.ogrid[: seeds.shape[0], : seeds.shape[1]]
        seeds[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    else:
        seeds[0, :] = seeds[-1, :] = seeds[:, 0] = seeds[:, -1] = 2
    for (px, py), lab in zip(prompt.points, prompt.labels):
        seeds[int(py) - y0, int(px) - x0] = 1 if lab == 1 else 2
    out = np.zeros((h, w), dtype=bool)
    if not (seeds == 1).any():
        return out
    if not (seeds == 2).any() or seeds.size < 4:
        out[y0:y1, x0:x1] = True
        return out
    crop = _grey(image[y0:y1, x0:x1])
    res = random_walker(crop, seeds, beta=beta, mode="cg_j" if crop.size > 4096 else "bf", tol=1e-3)
    out[y0:y1, x0:x1] = res == 1
    return out


def run_mode_baseline(image: np.ndarray, objects: list[ImageObject], window: Window, mode: PromptMode,
                      seed: int, case_key: int, margin: int) -> list[ObjectRun]:
    """The same prompt mode (same seeds, same click session) through the random-walker baseline."""

    def predict(prompts: list[Prompt], mask_input: np.ndarray | None):
        masks = np.stack([random_walker_segment(image, p, margin) for p in prompts])
        return masks, np.full(len(prompts), np.nan), None

    return run_mode(objects, window, mode, seed, case_key, predict)
