"""Corrective clicks as edits of a mask: where a click says the mask is wrong, the mask moves, nowhere else.

A click near the mask's boundary (closer than ``near`` x the mask's radius) shifts the boundary locally: the
mask's signed distance is thresholded at a level that is moved past the click (``overshoot`` x its distance)
with a Gaussian weight of width ``spread`` x that distance, so the boundary bends to include (or exclude) the
click and a margin around it, and stays where it was away from the click. A click far from the boundary
(a missed lobe, a false blob) is a whole region: the caller asks the model for the thing under the click and
adds or removes it (``region_edit``); when the model has nothing sensible there, a disk of the click's
local scale is added or removed. Settings were chosen on GlaS train and MoNuSeg train
(docs/protocols.md "Clicks on box-only models").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class CorrectionSettings:
    """How far a corrective click moves a mask."""

    near: float = 0.15  # clicks closer to the boundary than this x the mask's radius bend it locally
    spread: float = 2.0  # Gaussian width of the bend, x the click's distance to the boundary
    overshoot: float = 1.5  # the new boundary passes the click by this x its distance
    min_spread: float = 3.0  # pixels
    background_weight: float = 0.05  # weight of the unchanged level (0) against the click's
    margin: float = 0.5  # the click itself ends at least this far (px) inside / outside
    max_removal: float = 0.5  # a negative click removes a model region of at most this part of the mask
    # without a box, a positive click's model region larger than this x the mask is cut to the box of the mask
    # and the positive clicks (iter9 IoU after 9 clicks, MoNuSeg train 0.692 -> 0.775, GlaS train 0.918 -> 0.932;
    # 3.0: 0.765, 0.931; cut always: 0.769, 0.919); 0: no cut
    max_growth: float = 1.5
    # without a box, a negative click removes only the part of its model region nearer to it than to every positive
    # click (the region often straddles the object: MoNuSeg train iter9 IoU +0.006..0.009 per click, GlaS train
    # +0.002..0.005; with a box it dipped at click 2, so boxes keep the whole region)
    split_negatives: bool = True
    # without a box, on an object of radius (sqrt(area / pi)) at most ``walker_radius`` view px, the corrected mask's
    # boundary is placed by a random walker on the view's grey levels (``prompts.walker.walker_refine``: the mask
    # eroded / dilated by ``walker_band`` x its radius as object / background seeds, plus the clicks), where the
    # caller gave the predictor its image. Chosen on GlaS train (8 images) and MoNuSeg train (3): iter5 Dice 0.934
    # -> 0.934, 0.784 -> 0.815; on every correction (boxes and glands too) GlaS fell (iter5 0.934 -> 0.925,
    # box+iter5 0.968 -> 0.942) and MoNuSeg box+iter5 -0.01. 0: off
    walker_radius: float = 20.0
    walker_band: float = 0.25
    # the walker's boundary is kept only when it moves the mask the click's way: after a positive click no smaller
    # than the mask before the click, after a negative one no larger (else the click's edit without the walker). On
    # lung CT resliced to 3 mm rows it shrank GTV slices after positive clicks (resliced 3D Dice after 5 clicks 0.638
    # -> 0.652 with the guard); on the 2D tuning splits neutral (MoNuSeg train iter5 0.8155 -> 0.8162, GlaS 0.934)
    walker_direction: bool = True


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance (px) to the boundary of ``mask``: > 0 inside, < 0 outside (the image border counts as
    outside)."""
    pad = np.pad(np.asarray(mask, dtype=bool), 1)
    sdf = ndimage.distance_transform_edt(pad) - ndimage.distance_transform_edt(~pad)
    sdf = sdf[1:-1, 1:-1].astype(np.float32)
    return sdf - 0.5 * np.sign(sdf)  # the boundary halfway between the last pixel in and the first out


class CroppedSignedDistance:
    """``signed_distance(mask)`` of a non-empty mask, computed only where it is read (``sdf[y, x]``,
    ``sdf[y0:y1, x0:x1]``): over a crop holding the mask with one pixel more on every side and what is read, the
    values are the whole image's (every mask pixel and, for each one, a nearest background pixel lie in it). A
    click's edits read the distance near the click: on a small object in a large view that is a small part of
    the two distance transforms of the whole view."""

    def __init__(self, mask: np.ndarray) -> None:
        self._pad = np.pad(np.asarray(mask, dtype=bool), 1)  # the image border counts as outside
        rows, cols = np.flatnonzero(self._pad.any(1)), np.flatnonzero(self._pad.any(0))
        if not len(rows):
            raise ValueError("the signed distance of an empty mask is not defined")
        self.shape = mask.shape
        self._need = (rows[0] - 1, rows[-1] + 2, cols[0] - 1, cols[-1] + 2)  # padded coordinates
        self._crop: tuple[tuple[int, int, int, int], np.ndarray] | None = None

    def __getitem__(self, key: tuple) -> np.ndarray | np.float32:
        ys, xs = (k if isinstance(k, slice) else slice(int(k), int(k) + 1) for k in key)
        h, w = self.shape
        y0, y1, _ = ys.indices(h)
        x0, x1, _ = xs.indices(w)
        part = self._region(y0 + 1, y1 + 1, x0 + 1, x1 + 1)
        return part[0, 0] if not isinstance(key[0], slice) and not isinstance(key[1], slice) else part

    def _region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The signed distance over padded rows y0:y1, columns x0:x1, from the kept crop when it holds them."""
        if self._crop is not None:
            (cy0, cy1, cx0, cx1), sdf = self._crop
            if cy0 <= y0 and y1 <= cy1 and cx0 <= x0 and x1 <= cx1:
                return sdf[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
        ny0, ny1, nx0, nx1 = self._need
        box = (min(ny0, y0), max(ny1, y1), min(nx0, x0), max(nx1, x1))
        crop = self._pad[box[0] : box[1], box[2] : box[3]]
        sdf = (ndimage.distance_transform_edt(crop) - ndimage.distance_transform_edt(~crop)).astype(np.float32)
        self._crop = (box, sdf - 0.5 * np.sign(sdf))
        return self._region(y0, y1, x0, x1)


Distance = np.ndarray | CroppedSignedDistance  # a mask's signed distance, whole or computed where read


def distance_of(mask: np.ndarray) -> Distance:
    """The signed distance an edit reads: computed where read for a non-empty mask (``CroppedSignedDistance``),
    else the whole image's (``signed_distance``)."""
    return CroppedSignedDistance(mask) if np.any(mask) else signed_distance(mask)


def mask_radius(mask: np.ndarray) -> float:
    """The radius of a disk of the mask's area (px; at least 1)."""
    return float(np.sqrt(max(int(np.count_nonzero(mask)), 1) / np.pi))


def click_distance(mask: np.ndarray, xy: np.ndarray, sdf: Distance | None = None) -> float:
    """How far (px) pixel ``xy`` (x, y) lies from the boundary of ``mask`` (``sdf``: its signed distance when
    the caller has it)."""
    x, y = pixel_of(xy, mask.shape)
    sdf = distance_of(mask) if sdf is None else sdf
    return float(abs(sdf[y, x]))


def is_near(mask: np.ndarray, xy: np.ndarray, settings: CorrectionSettings, sdf: Distance | None = None) -> bool:
    """Whether a click at ``xy`` is close enough to the boundary of ``mask`` to be a local bend."""
    return bool(mask.any()) and click_distance(mask, xy, sdf) <= settings.near * mask_radius(mask)


def bend(mask: np.ndarray, xy: np.ndarray, label: int, settings: CorrectionSettings,
         sdf: Distance | None = None) -> np.ndarray:
    """``mask`` with its boundary moved locally past a click at ``xy`` (label 1 adds, 0 removes)."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    x, y = pixel_of(xy, mask.shape)
    sdf = distance_of(mask) if sdf is None else sdf
    level = float(sdf[y, x])
    d = abs(level) + 0.5  # pixels to the nearest pixel of the other side
    sigma = max(settings.spread * d, settings.min_spread)
    if label == 1:
        tau = min(settings.overshoot * level, level - settings.margin)
    else:
        tau = max(settings.overshoot * level, level + settings.margin)
    reach = int(np.ceil(4 * sigma))
    y0, y1, x0, x1 = max(y - reach, 0), min(y + reach + 1, h), max(x - reach, 0), min(x + reach + 1, w)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    weight = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma * sigma)).astype(np.float32)
    threshold = weight * tau / (weight + settings.background_weight)
    out = mask.copy()
    out[y0:y1, x0:x1] = sdf[y0:y1, x0:x1] > threshold
    return out


def region_edit(mask: np.ndarray, region: np.ndarray, label: int, settings: CorrectionSettings) -> np.ndarray | None:
    """``mask`` with the model's ``region`` under a click added (label 1) or removed (0); None when the region
    is empty or would remove too much of the mask (the click then gets a disk, ``disk_edit``). (Stopping a
    removal at twice the click's depth into the mask was measured worse on MoNuSeg train and GlaS train.)"""
    if not region.any():
        return None
    if label == 1:
        return mask | region
    if np.count_nonzero(region & mask) > settings.max_removal * np.count_nonzero(mask):
        return None
    return mask & ~region


def disk_edit(mask: np.ndarray, xy: np.ndarray, label: int, settings: CorrectionSettings,
              sdf: Distance | None = None) -> np.ndarray:
    """``mask`` with a disk at the click added or removed, of the click's scale (its distance to the
    boundary, at most ``near`` x the mask's radius, times ``overshoot``)."""
    x, y = pixel_of(xy, mask.shape)
    scale = (min(click_distance(mask, xy, sdf), settings.near * mask_radius(mask)) if mask.any()
             else settings.min_spread)
    r = max(settings.overshoot * scale, 1.0)
    yy, xx = np.ogrid[: mask.shape[0], : mask.shape[1]]
    disk = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
    return mask | disk if label == 1 else mask & ~disk


def pixel_of(xy: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int]:
    """The pixel (x, y) of a click at ``xy``, clamped into an image of ``shape`` (h, w, ...)."""
    return int(np.clip(xy[0], 0, shape[1] - 1)), int(np.clip(xy[1], 0, shape[0] - 1))
