"""Prompt layouts of everything mode: stain-blob proposals (boxes around candidate nuclei), the naive box grid,
SAM's point grid, and the rule that assigns each whole-image proposal to the tile holding it most centrally.

All boxes are [x0, y0, x1, y1] inclusive, in pixels of the image (or tile) they were made on.
"""

from __future__ import annotations

import numpy as np

from medsamkit.predictor import as_rgb_float


def _unit_rgb(image: np.ndarray) -> np.ndarray:
    """float (H,W,3) in [0,1]: integer images by their dtype range, float images min-max scaled."""
    arr = np.asarray(image)
    rgb = as_rgb_float(arr)
    if np.issubdtype(arr.dtype, np.integer):
        return rgb / float(np.iinfo(arr.dtype).max)
    lo, hi = float(rgb.min()), float(rgb.max())
    return (rgb - lo) / max(hi - lo, 1e-8)


def stain_signal(image: np.ndarray) -> np.ndarray:
    """Per-pixel 'nucleus-ness' in [0,1]: haematoxylin density (colour) or the minority intensity (grey)."""
    from skimage.color import rgb2hed

    rgb = _unit_rgb(image)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] >= 3 and not np.allclose(rgb[..., 0], rgb[..., 1]):
        signal = rgb2hed(rgb)[..., 0]
    else:
        grey = rgb[..., 0]
        lo, hi = np.percentile(grey, (1, 99))
        # Objects are the minority: a bright background (brightfield) means dark objects, else bright (fluorescence).
        signal = 1.0 - grey if np.median(grey) > (lo + hi) / 2 else grey
    lo, hi = np.percentile(signal, (1, 99.5))
    return np.clip((signal - lo) / max(hi - lo, 1e-8), 0, 1).astype(np.float32)


def blob_proposals(image: np.ndarray, min_distance: int = 4, min_area: int = 10) -> np.ndarray:
    """Boxes (K,4) [x0,y0,x1,y1] inclusive of candidate nuclei: Otsu on the smoothed stain signal, then a
    distance-transform watershed splits touching blobs (one box per watershed region)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    signal = gaussian(stain_signal(image), sigma=1.0)
    foreground = signal > threshold_otsu(signal)
    blobs, n = ndi.label(ndi.binary_fill_holes(foreground))
    foreground = (np.bincount(blobs.ravel(), minlength=n + 1) >= min_area)[blobs] & (blobs > 0)
    if not foreground.any():
        return np.zeros((0, 4), dtype=np.int64)
    distance = gaussian(ndi.distance_transform_edt(foreground), sigma=1.0)
    blobs, _ = ndi.label(foreground)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=blobs, exclude_border=False)
    markers = np.zeros(foreground.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    regions = watershed(-distance, markers, mask=foreground)
    boxes = [
        (s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1)
        for s in ndi.find_objects(regions)
        if s is not None
    ]
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


def expand_boxes(boxes: np.ndarray, pads: tuple[int, ...], shape: tuple[int, int]) -> np.ndarray:
    """Each box grown by each of `pads` pixels on every side (all of pads[0] first), clipped to the image."""
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    out = [b + np.array([-p, -p, p, p]) for p in pads]
    res = np.concatenate(out) if out else np.zeros((0, 4), dtype=np.int64)
    h, w = shape[:2]
    res[:, [0, 2]] = np.clip(res[:, [0, 2]], 0, w - 1)
    res[:, [1, 3]] = np.clip(res[:, [1, 3]], 0, h - 1)
    return res.astype(np.int64)


def grid_boxes(shape: tuple[int, int], sizes: tuple[int, ...], stride: int) -> np.ndarray:
    """The naive multi-scale box grid of a tile: boxes of each side in `sizes` centred every `stride` px."""
    h, w = shape[:2]
    out = []
    for size in sizes:
        ys = np.arange(stride // 2, h, stride)
        xs = np.arange(stride // 2, w, stride)
        cy, cx = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
        half = size / 2
        out.append(np.stack([cx - half, cy - half, cx + half - 1, cy + half - 1], axis=1))
    b = np.round(np.concatenate(out)).astype(np.int64)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w - 1)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h - 1)
    return b


def point_grid(shape: tuple[int, int], per_side: int) -> np.ndarray:
    """SAM's point grid: `per_side`^2 points (x, y) at cell centres of the tile."""
    h, w = shape[:2]
    offs = (np.arange(per_side) + 0.5) / per_side
    ys, xs = np.meshgrid(offs * h, offs * w, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def assign_to_windows(boxes: np.ndarray, windows: list[tuple[int, int, int, int]]) -> np.ndarray:
    """For each box, the window containing it with the largest margin (so its mask is not cut by a border)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    w = np.asarray(windows, dtype=np.int64)  # (T, 4) y0, x0, y1, x1 exclusive
    b = np.asarray(boxes, dtype=np.int64)
    margin = np.minimum.reduce([
        b[:, None, 0] - w[None, :, 1],
        b[:, None, 1] - w[None, :, 0],
        w[None, :, 3] - 1 - b[:, None, 2],
        w[None, :, 2] - 1 - b[:, None, 3],
    ])
    return margin.argmax(axis=1)
