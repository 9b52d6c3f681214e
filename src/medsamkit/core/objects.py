"""Binary objects from a label map: one per instance id or class value, stored as tight crops.

A MoNuSeg image holds ~700 nuclei, so objects keep only their bounding slices and the mask inside them;
full-size masks are made on demand (``ImageObject.mask``) one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from medsamkit.core.errors import InputError, where

# SAM-Med2D drops ground-truth masks smaller than 0.153% of the image area.
SAM_MED2D_MIN_FRACTION = 0.00153

ObjectKind = Literal["instance", "class"]
#: A tile: (y0, x0, y1, x1) in image pixels, end exclusive (a CT intensity window is io.windowing.IntensityWindow).
Window = tuple[int, int, int, int]


@dataclass
class ImageObject:
    """One binary object of a label map: its label, tight bounding slices and the mask inside them."""

    label: int
    slices: tuple[slice, slice]
    crop: np.ndarray
    area: int

    def box(self) -> np.ndarray:
        """Tight box ``[x0, y0, x1, y1]`` (float32, x1/y1 inclusive) in full-image coordinates."""
        rows, cols = self.slices
        return np.array([cols.start, rows.start, cols.stop - 1, rows.stop - 1], dtype=np.float32)

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The object as a full-size boolean mask of ``shape`` (rows, cols)."""
        full = np.zeros(tuple(shape)[:2], dtype=bool)
        full[self.slices] = self.crop
        return full

    def mask_in(self, window: Window) -> np.ndarray:
        """The object's pixels inside ``window = (y0, x0, y1, x1)`` (exclusive ends), in window coordinates."""
        y0, x0, y1, x1 = (int(v) for v in window)
        out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
        rows, cols = self.slices
        r0, r1 = max(rows.start, y0), min(rows.stop, y1)
        c0, c1 = max(cols.start, x0), min(cols.stop, x1)
        if r0 < r1 and c0 < c1:
            out[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] = self.crop[
                r0 - rows.start : r1 - rows.start, c0 - cols.start : c1 - cols.start
            ]
        return out


@dataclass
class ObjectSet:
    """The objects kept from one label map, and how many were skipped as too small."""

    objects: list[ImageObject] = field(default_factory=list)
    skipped_small: int = 0
    kind: ObjectKind = "instance"
    image_shape: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.objects)

    def __iter__(self) -> Iterator[ImageObject]:
        return iter(self.objects)

    def __getitem__(self, index: int) -> ImageObject:
        return self.objects[index]

    @property
    def labels(self) -> list[int]:
        """Labels of the kept objects, ascending."""
        return [obj.label for obj in self.objects]


def _integer_labels(label_map: np.ndarray, source: object | None) -> np.ndarray:
    """Validate a 2-D label map and return it as a non-negative integer array."""
    arr = np.asarray(label_map)
    if arr.ndim != 2:
        raise InputError(f"{where(source)}label map must be 2-D (rows, cols), got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{where(source)}label map is empty (shape {arr.shape})")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        # Volumes read from NIfTI often carry integer labels in a float array: accept whole numbers only.
        if np.isnan(arr).any():
            raise InputError(f"{where(source)}label map contains NaN")
        if not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{where(source)}label map has non-integer values (dtype {arr.dtype})")
        if arr.min() < 0 or arr.max() > np.iinfo(np.int64).max:
            raise InputError(f"{where(source)}label map has negative or out-of-range values")
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{where(source)}label map must hold integers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise InputError(f"{where(source)}label map has negative labels (min {int(arr.min())})")
    return arr


def extract_objects(
    label_map: np.ndarray,
    kind: ObjectKind = "instance",
    min_area: int = 0,
    min_fraction: float = 0.0,
    source: object | None = None,
) -> ObjectSet:
    """One object per nonzero label (instance id or class value); objects below either threshold are skipped.

    Non-contiguous regions sharing a label stay one object in both kinds; ``kind`` is recorded for reports.
    An object is skipped when ``area < min_area`` or ``area < min_fraction * image area``
    (SAM-Med2D: ``min_fraction=SAM_MED2D_MIN_FRACTION``). ``source`` names the file in error messages.
    """
    if kind not in ("instance", "class"):
        raise InputError(f"{where(source)}object kind must be 'instance' or 'class', got {kind!r}")
    if min_area < 0:
        raise InputError(f"{where(source)}min_area must be >= 0, got {min_area}")
    if not 0.0 <= min_fraction < 1.0:
        raise InputError(f"{where(source)}min_fraction must be in [0, 1), got {min_fraction}")
    labels = _integer_labels(label_map, source)
    shape = (int(labels.shape[0]), int(labels.shape[1]))

    values = np.unique(labels)
    values = values[values != 0]
    if values.size == 0:
        return ObjectSet([], 0, kind, shape)
    # find_objects allocates one entry per id up to the maximum: relabel sparse, large ids first.
    if int(values[-1]) > 4 * values.size + 65536:
        compact = np.searchsorted(values, labels).astype(np.int64) + 1
        compact[labels == 0] = 0
        lookup = values
    else:
        compact = labels
        lookup = None

    threshold = max(float(min_area), min_fraction * labels.size)
    objects: list[ImageObject] = []
    skipped = 0
    for index, slices in enumerate(ndimage.find_objects(compact)):
        if slices is None:
            continue
        compact_id = index + 1
        crop = compact[slices] == compact_id
        area = int(np.count_nonzero(crop))
        if area < threshold:
            skipped += 1
            continue
        label = int(lookup[index]) if lookup is not None else compact_id
        objects.append(ImageObject(label, (slices[0], slices[1]), crop, area))
    return ObjectSet(objects, skipped, kind, shape)


def parse_classes(text: str | None) -> set[int] | None:
    """'1,3,7' -> {1, 3, 7}; None/empty -> None (all label values)."""
    if text is None or not str(text).strip():
        return None
    try:
        return {int(v) for v in str(text).split(",") if v.strip()}
    except ValueError:
        raise InputError(f"--classes {text!r}: expected a comma list of label values, e.g. 1,2") from None
