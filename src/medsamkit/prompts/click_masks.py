"""What clicks do to a mask, whatever answered them: the connected parts they lie on, the part of a region nearer
one click than the others, a box grown to hold them, and the last word (``enforce``: every click honoured)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsamkit.prompts.corrections import pixel_of
from medsamkit.prompts.simulate import Prompt


def parts_at(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` holding any of the pixels ``points`` (N, 2; x, y); empty where none does."""
    pixels = [pixel_of(xy, mask.shape) for xy in np.asarray(points).reshape(-1, 2)]
    on = [(x, y) for x, y in pixels if mask[y, x]]
    if not on:
        return np.zeros_like(mask)
    # labelled on the crop holding the mask (its parts are all inside it): 2-4x faster on an image-sized view
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    labels, _ = ndimage.label(mask[box])
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = np.isin(labels, [labels[y - rows[0], x - cols[0]] for x, y in on])
    return out


def clicked_parts(mask: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` holding a positive click (N, 2; x, y); ``mask`` itself where none does."""
    parts = parts_at(mask, positives)
    return parts if parts.any() else np.array(mask, dtype=bool, copy=True)


def nearer_part(part: np.ndarray, xy: np.ndarray, others: np.ndarray) -> np.ndarray:
    """The pixels of ``part`` nearer to point ``xy`` than to every point of ``others`` (N, 2), all (x, y)."""
    rows, cols = np.nonzero(part)
    pix = np.stack([cols, rows], 1).astype(np.float32)
    mine = ((pix - np.asarray(xy, dtype=np.float32)) ** 2).sum(1)
    theirs = ((pix[:, None] - np.asarray(others, dtype=np.float32)[None]) ** 2).sum(2).min(1)
    keep = mine < theirs
    out = np.zeros_like(part)
    out[rows[keep], cols[keep]] = True
    return out


def box_mask(prompt: Prompt, shape: tuple[int, int]) -> np.ndarray:
    """The prompt's box grown to hold its positive clicks, as a mask."""
    x0, y0, x1, y1 = prompt.box
    pos = prompt.points[prompt.labels == 1]
    if len(pos):
        x0, y0 = min(x0, pos[:, 0].min()), min(y0, pos[:, 1].min())
        x1, y1 = max(x1, pos[:, 0].max()), max(y1, pos[:, 1].max())
    out = np.zeros(shape, dtype=bool)
    out[max(int(np.floor(y0)), 0) : int(np.ceil(y1)) + 1, max(int(np.floor(x0)), 0) : int(np.ceil(x1)) + 1] = True
    return out


def enforce(mask: np.ndarray, points: np.ndarray, labels: np.ndarray, radius: int = 1) -> np.ndarray:
    """``mask`` made to honour every click: a disk of ``radius`` px added at positive clicks outside it and
    removed at negative clicks inside it (later clicks win where disks overlap)."""
    out = np.array(mask, dtype=bool, copy=True)
    h, w = out.shape
    for xy, lab in zip(np.asarray(points), np.asarray(labels)):
        cx, cy = pixel_of(xy, out.shape)
        if out[cy, cx] == (lab == 1):
            continue
        y0, y1, x0, x1 = max(cy - radius, 0), min(cy + radius + 1, h), max(cx - radius, 0), min(cx + radius + 1, w)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius
        out[y0:y1, x0:x1][disk] = lab == 1
    return out
