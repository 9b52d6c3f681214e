"""One DICOM file: reading it with one-line errors, and the numeric attributes the readers need."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medsamkit.core.errors import InputError
from medsamkit.io.volume import first_line

#: Modalities that live beside image series but carry no slice of the image.
NON_IMAGE_MODALITIES = frozenset({"RTSTRUCT", "SEG", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG"})


def read_dataset(path: Path, header_only: bool) -> Dataset:
    """Read one DICOM file, turning any parser failure into an `InputError` that names the file."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=header_only)
    except Exception as err:  # InvalidDicomError, EOFError, struct errors from truncated files, ...
        raise InputError(f"{path}: unreadable DICOM file ({first_line(err)})") from err


def is_image(ds: Dataset) -> bool:
    """Whether a dataset is a slice of an image series (not RTSTRUCT / SEG / ..., and has a position)."""
    return (
        str(ds.get("Modality", "")).upper() not in NON_IMAGE_MODALITIES
        and "Rows" in ds
        and "ImagePositionPatient" in ds
    )


def dicom_floats(ds: Dataset, keyword: str, path: Path, count: int) -> np.ndarray:
    """The ``count`` numbers of a multi-valued attribute; `InputError` when missing or malformed."""
    value = ds.get(keyword)
    if value is None:
        raise InputError(f"{path}: missing {keyword}")
    try:
        numbers = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: malformed {keyword} {value!r}") from err
    if numbers.shape != (count,):
        raise InputError(f"{path}: {keyword} has {numbers.size} values, expected {count}")
    return numbers


def pixel_spacing(ds: Dataset, path: Path) -> np.ndarray:
    """(row spacing, column spacing) in mm, from PixelSpacing or else ImagerPixelSpacing."""
    keyword = "PixelSpacing" if "PixelSpacing" in ds else "ImagerPixelSpacing"
    return dicom_floats(ds, keyword, path, 2)
