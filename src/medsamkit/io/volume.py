"""The 3D volume type every reader returns: `Volume`, its axis conventions, and grid checks.

This module imports no reader (NIfTI / NRRD live in `medsamkit.io.nifti_nrrd`, DICOM in `medsamkit.io.dicom`,
the format dispatch `read_volume` in `medsamkit.io.volume_reader`), so every reader can import it.

Conventions the rest of medsamkit relies on:

- ``Volume.array`` is indexed ``[z, y, x]``: slices first, z increasing along the slice normal; a 2D
  slice ``array[k]`` is an image with rows (y) and columns (x), ready for a 2D model.
- ``Volume.spacing`` is the voxel size in mm as ``(z, y, x)``.
- ``Volume.affine`` is the 4x4 NIfTI-style RAS+ affine mapping the voxel index ``(x, y, z)`` (i.e. of
  ``array.transpose(2, 1, 0)``, the order NIfTI stores) to world millimetres. DICOM and NRRD files in LPS
  are converted by flipping the sign of the x and y rows.
- NIfTI files are kept in their stored voxel order (no reorientation), so a mask written with
  `write_nifti(mask, path, like=image)` lines up voxel for voxel with the image file it came from.
- ``Volume.meta`` holds what the reader knew (for DICOM: SeriesInstanceUID, per-slice SOPInstanceUIDs and
  ImagePositionPatient, ImageOrientationPatient, ...) so RTSTRUCT / SEG files can be mapped onto the grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsamkit.core.errors import InputError

#: x and y change sign between DICOM/NRRD LPS and NIfTI RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
DICOM_FILE_SUFFIXES = (".dcm", ".dicom", ".ima")
#: Volume files a data SPEC may name (DICOM comes as a series folder).
VOLUME_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES


@dataclass(eq=False)  # arrays make field-wise == ambiguous; compare .array explicitly
class Volume:
    """A 3D image or label map on a known grid (see the module docstring for the axis conventions)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid size as (z, y, x)."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm: the lengths of the affine's x, y, z columns, reversed."""
    sizes = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    return (float(sizes[2]), float(sizes[1]), float(sizes[0]))


def first_line(err: BaseException) -> str:
    """The first line of a parser's exception message (for one-line `InputError` messages)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def file_suffix(path: Path) -> str:
    """The format suffix of a file name, lower case (``.nii.gz`` counts as one suffix)."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_volume_file(path: Path) -> bool:
    """Whether ``path`` names a NIfTI or NRRD file (by suffix)."""
    return file_suffix(path) in VOLUME_SUFFIXES


def label_dtype(array: np.ndarray) -> np.dtype:
    """Smallest common integer dtype for labels; float stays float32."""
    if array.dtype == bool:
        return np.dtype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.size == 0:
            return np.dtype(np.uint8)
        low, high = int(array.min()), int(array.max())
        for candidate in (np.uint8, np.int16, np.uint16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= low and high <= info.max:
                return np.dtype(candidate)
        return array.dtype
    return np.dtype(np.float32)


def check_same_grid(label: Volume, image: Volume, atol_mm: float = 1e-3, what: str = "label") -> None:
    """Raise `InputError` naming both files when ``label`` is not on ``image``'s voxel grid.

    The affines are compared in mm: ``atol_mm`` (default 1 micrometre) allows float round-off in headers.
    ``what`` names the checked volume in the message (a "label", a "channel", ...).
    """
    if label.array.shape != image.array.shape:
        raise InputError(
            f"{label.source}: {what} shape {tuple(label.array.shape)} does not match image shape "
            f"{tuple(image.array.shape)} of {image.source}"
        )
    diff = float(np.abs(np.asarray(label.affine, float) - np.asarray(image.affine, float)).max())
    if diff > atol_mm:
        raise InputError(
            f"{label.source}: {what} affine differs from the affine of {image.source} by up to "
            f"{diff:.4g} mm (not the same voxel grid)"
        )
