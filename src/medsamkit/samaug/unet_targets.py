"""Three-class U-Net targets (background / object interior / object boundary) from instance maps, and the
way back: instances from the network's class probabilities (interior components grown into the objects).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries, watershed

from medsamkit.core.errors import InputError

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
N_CLASSES = 3


def three_class_target(instances: np.ndarray, boundary_width: int = 1) -> np.ndarray:
    """uint8 (H, W) target: 0 background, 1 object interior, 2 object boundary.

    The boundary is the object's own pixels next to background or to another instance (4-neighbours,
    skimage ``find_boundaries(mode="inner")``), so two touching nuclei are parted by a 2-pixel band;
    ``boundary_width`` > 1 thickens it inwards by ``boundary_width - 1`` pixels, never outside objects.
    """
    labels = np.asarray(instances)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InputError(f"instance map must be a 2D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if boundary_width < 1:
        raise InputError(f"boundary width must be >= 1 pixel, got {boundary_width}")
    objects = labels > 0
    boundary = find_boundaries(labels, connectivity=1, mode="inner") & objects
    if boundary_width > 1:
        cross = ndimage.generate_binary_structure(2, 1)
        boundary = ndimage.binary_dilation(boundary, cross, iterations=boundary_width - 1) & objects
    target = np.zeros(labels.shape, dtype=np.uint8)
    target[objects] = INTERIOR
    target[boundary] = BOUNDARY
    return target


def class_map(probs_or_classes: np.ndarray) -> np.ndarray:
    """Per-pixel class (H, W) from probabilities/logits (3, H, W) by argmax, or a class map passed through."""
    arr = np.asarray(probs_or_classes)
    if arr.ndim == 3 and arr.shape[0] == N_CLASSES:
        return np.argmax(arr, axis=0).astype(np.uint8)
    if arr.ndim == 2 and np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() >= N_CLASSES):
            raise InputError(f"class map values must be 0, 1 or 2, found range [{arr.min()}, {arr.max()}]")
        return arr.astype(np.uint8)
    raise InputError(f"expected probabilities (3, H, W) or an integer class map (H, W), got shape {arr.shape}")


def instances_from_probs(probs_or_classes: np.ndarray, min_size: int = 10) -> np.ndarray:
    """int32 instance map (0 background) from class probabilities (3, H, W) or a class map (H, W).

    Seeds are the 4-connected components of the interior class (components under ``min_size`` pixels are
    dropped as noise); each seed is then grown, nearest first, through the predicted object region
    (interior + boundary) it is connected to. Object regions that hold no seed are left as background.
    """
    classes = class_map(probs_or_classes)
    interior = classes == INTERIOR
    foreground = classes != BACKGROUND
    seeds, n = ndimage.label(interior)
    if n and min_size > 1:
        sizes = np.bincount(seeds.ravel())
        keep = sizes >= min_size
        keep[0] = False
        # Renumber the kept components 1..m so ids stay compact after filtering.
        lut = np.cumsum(keep).astype(np.int32) * keep
        seeds = lut[seeds]
    if not seeds.any():
        return np.zeros(classes.shape, dtype=np.int32)
    # Flooding the distance to the nearest seed grows every seed outward at the same speed.
    distance = ndimage.distance_transform_edt(seeds == 0)
    grown = watershed(distance, markers=seeds, mask=foreground, connectivity=1)
    return grown.astype(np.int32)
