"""SAMAug fusion: how an image and its SAM prior maps become the U-Net's 3-channel input.

Two rules, chosen per U-Net run (`medsamkit unet train --fusion`, recorded in the run's identity):
  "clip"   (default) the saved priors (medsamkit.samaug.priors): seg prior clipped to [0, 1], the saved
           boundary prior (outer rings dilated by `--boundary-thickness`), so every channel lies in [0, 2];
  "paper"  the SAMAug listing exactly: seg prior = sum of the masks' stability scores, unnormalised; boundary
           prior = union of each mask's thick boundary (skimage `find_boundaries(mode="thick")`: the pixels on
           both sides of its edge), binarised; both recomputed from the saved masks (`paper_priors`);
  "none"   the saved priors with the seg prior unclipped (the first round's name for an unclipped seg prior).
In every rule the image is float in [0, 1] (`unit_image`), channel 1 (green) += seg, channel 2 (blue) +=
boundary; a grey image becomes [grey, seg, boundary].
"""

from __future__ import annotations

import numpy as np

from medsamkit.core.errors import InputError, where
from medsamkit.samaug.everything import MaskRecord

NORMALISATIONS = ("clip", "paper", "none")


def unit_image(image: np.ndarray, source: object | None = None) -> np.ndarray:
    """float32 in [0,1], the one intensity rule of SAMAug fusion and of the U-Net input (train and test alike).

    uint8 is divided by 255 (a fixed scale keeps stains comparable across slides); any other image already
    inside [0,1] is kept; everything else (12/16-bit microscopy, CT, floats in other ranges) is min-max
    scaled per image, so low-range uint16 data is not left near black. A constant image becomes zeros.
    """
    arr = np.asarray(image)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{where(source)}unsupported image dtype {arr.dtype}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255)
    out = arr.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        raise InputError(f"{where(source)}image contains {int(bad.sum())} NaN/inf values")
    colour = out[..., :3] if out.ndim == 3 and out.shape[-1] == 4 else out  # alpha is dropped, not scaled by
    lo, hi = (float(colour.min()), float(colour.max())) if colour.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return out
    return (out - lo) / np.float32(hi - lo) if hi > lo else np.zeros_like(out)


def fuse(
    image: np.ndarray, seg_prior: np.ndarray, boundary: np.ndarray, normalisation: str = "clip"
) -> np.ndarray:
    """SAMAug input: float32 (H, W, 3).

    The image is brought to [0,1] by `unit_image`; RGB(A, alpha dropped): channel
    1 += seg prior, channel 2 += boundary prior; grey (H,W) or (H,W,1): [grey, seg prior, boundary prior].
    normalisation "clip" (default) clips the seg prior to [0,1] before adding, so every channel lies in
    [0, 2] whatever the mask overlaps; "paper" and "none" add it raw (for "paper" pass `paper_priors`' maps).
    Use the same rule for train and test.
    """
    if normalisation not in NORMALISATIONS:
        raise InputError(f"unknown normalisation {normalisation!r}; choose one of: {', '.join(NORMALISATIONS)}")
    img = unit_image(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
        raise InputError(f"expected a grey, RGB or RGBA image, got shape {np.shape(image)}")
    seg = np.asarray(seg_prior, dtype=np.float32)
    bnd = np.asarray(boundary, dtype=np.float32)
    if seg.shape != img.shape[:2] or bnd.shape != img.shape[:2]:
        raise InputError(
            f"prior shapes {seg.shape} / {bnd.shape} do not match image shape {img.shape[:2]}"
        )
    if normalisation == "clip":
        seg = np.clip(seg, 0, 1)
    if img.ndim == 2:
        return np.stack([img, seg, bnd], axis=-1).astype(np.float32)
    out = img[..., :3].copy()
    out[..., 1] += seg
    out[..., 2] += bnd
    return out



def _padded(crop: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int], pad: int = 2) -> np.ndarray:
    """The crop with `pad` pixels around it: background inside the image, the crop's own edge repeated past the
    image border (`find_boundaries` on the whole image reflects at its edges, so the border is no boundary)."""
    x0, y0, x1, y1 = box
    h, w = shape
    zero = ((pad * (y0 > 0), pad * (y1 < h - 1)), (pad * (x0 > 0), pad * (x1 < w - 1)))
    edge = tuple((pad - a, pad - b) for a, b in zero)
    return np.pad(np.pad(crop, zero), edge, mode="edge")


def paper_boundary(records: list[MaskRecord], shape: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) in {0,1}: union of every mask's `find_boundaries(mask, mode="thick")` (SAMAug's listing),
    computed on each mask's box plus a margin (the thick boundary reaches one pixel outside the mask)."""
    from skimage.segmentation import find_boundaries

    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), dtype=bool)
    for r in records:
        x0, y0, x1, y1 = r.box
        ring = find_boundaries(_padded(r.crop, r.box, (h, w)).astype(np.uint8), mode="thick")[1:-1, 1:-1]
        cy0, cx0 = max(y0 - 1, 0), max(x0 - 1, 0)  # ring[0, 0] is pixel (y0 - 1, x0 - 1)
        cy1, cx1 = min(y1 + 2, h), min(x1 + 2, w)
        out[cy0:cy1, cx0:cx1] |= ring[cy0 - y0 + 1 : cy1 - y0 + 1, cx0 - x0 + 1 : cx1 - x0 + 1]
    return out.astype(np.uint8)


def paper_priors(records: list[MaskRecord], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(seg float32: sum of stability scores on each mask's pixels, boundary uint8: `paper_boundary`)."""
    h, w = int(shape[0]), int(shape[1])
    seg = np.zeros((h, w), dtype=np.float32)
    for r in records:
        x0, y0, x1, y1 = r.box
        seg[y0 : y1 + 1, x0 : x1 + 1][r.crop] += np.float32(r.stability_score)
    return seg, paper_boundary(records, (h, w))
