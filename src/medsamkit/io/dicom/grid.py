"""Placing DICOM objects that refer to an image series (RTSTRUCT contours, SEG frames) on its `Volume` grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.io.volume import Volume


def lps_to_voxel(points_lps: np.ndarray, reference: Volume) -> np.ndarray:
    """Patient LPS mm points (N, 3) -> continuous voxel indices (N, 3) as (x, y, z) of ``reference``."""
    ras = points_lps * np.array([-1.0, -1.0, 1.0])
    homogeneous = np.c_[ras, np.ones(len(ras))]
    return (np.linalg.inv(reference.affine) @ homogeneous.T).T[:, :3]


def slice_index(voxel_z: float, reference: Volume, where: str) -> int:
    """The slice within half a step of a continuous z index, else `InputError` naming the position."""
    k = int(np.rint(voxel_z))
    if abs(voxel_z - k) > 0.5 + 1e-6 or not 0 <= k < reference.shape[0]:
        raise InputError(f"{where} lies on no slice of {reference.source}")
    return k


def check_referenced_series(path: Path, referenced: set[str], reference: Volume, kind: str) -> None:
    """`InputError` when the file names series other than ``reference``'s (no reference: accepted)."""
    expected = reference.meta.get("SeriesInstanceUID")
    if referenced and expected and expected not in referenced:
        raise InputError(
            f"{path}: {kind} refers to series {', '.join(sorted(referenced))}, not to series {expected} "
            f"of {reference.source}"
        )
