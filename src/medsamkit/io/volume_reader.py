"""Read any supported volume file by its format: `read_volume` and `read_label_volume`.

This is the top of the volume readers: it dispatches to `medsamkit.io.nifti_nrrd` (NIfTI / NRRD) and
`medsamkit.io.dicom.series` (a DICOM series folder, or the series of one DICOM file); none of them
imports it back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.io.dicom.series import read_dicom_series, series_uid_of
from medsamkit.io.nifti_nrrd import read_nifti, read_nrrd
from medsamkit.io.volume import (
    DICOM_FILE_SUFFIXES,
    NIFTI_SUFFIXES,
    NRRD_SUFFIXES,
    Volume,
    check_same_grid,
    file_suffix,
    label_dtype,
)


def read_volume(path: str | Path) -> Volume:
    """Read any supported volume: NIfTI, NRRD, a DICOM series folder, or the series of one DICOM file."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    suffix = file_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path)
    if suffix in NRRD_SUFFIXES:
        return read_nrrd(path)
    if suffix in DICOM_FILE_SUFFIXES:
        return read_dicom_series(path.parent, series_uid=series_uid_of(path))
    raise InputError(
        f"{path}: unsupported volume format {suffix or '(no suffix)'}; expected .nii, .nii.gz, .nrrd, "
        ".nhdr, .dcm or a DICOM series folder"
    )


def read_label_volume(path: str | Path, reference: Volume, atol_mm: float = 1e-3) -> Volume:
    """Read a label map (NIfTI / NRRD), check it lies on ``reference``'s grid, return integer labels."""
    label = read_volume(path)
    check_same_grid(label, reference, atol_mm)
    array = label.array
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise InputError(f"{label.source}: label map has non-integer values; expected class/instance ids")
        array = rounded.astype(np.int64)
    label.array = array.astype(label_dtype(array), copy=False)
    return label
