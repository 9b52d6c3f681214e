"""DICOM RTSTRUCT files: each ROI's closed planar contours filled into a bool mask on an image series' grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from skimage.draw import polygon, polygon_perimeter

from medsamkit.core.errors import InputError
from medsamkit.io.dicom.files import read_dataset
from medsamkit.io.dicom.grid import check_referenced_series, lps_to_voxel, slice_index
from medsamkit.io.volume import Volume


def _referenced_series(ds: Dataset) -> set[str]:
    uids = set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if "SeriesInstanceUID" in series:
                    uids.add(str(series.SeriesInstanceUID))
    return uids


def _unique_name(name: str, number: int, taken: dict[str, np.ndarray]) -> str:
    return name if name not in taken else f"{name} ({number})"


def _draw_contour(contour: Dataset, name: str, path: Path, reference: Volume, include_boundary: bool,
                  mask: np.ndarray) -> None:
    """XOR one CLOSED_PLANAR contour's filled polygon into its slice of ``mask`` (others are skipped)."""
    if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
        return
    points = np.asarray([float(v) for v in contour.ContourData], dtype=float).reshape(-1, 3)
    if len(points) < 3:
        return
    voxels = lps_to_voxel(points, reference)
    where = f"{path}: contour of ROI '{name}' at z={points[:, 2].mean():.2f} mm"
    if np.ptp(voxels[:, 2]) > 0.5:
        raise InputError(f"{where} is not parallel to the slices of {reference.source}")
    k = slice_index(float(voxels[:, 2].mean()), reference, where)
    shape = reference.shape[1:]
    rows, cols = polygon(voxels[:, 1], voxels[:, 0], shape=shape)
    plane = np.zeros(shape, dtype=bool)
    plane[rows, cols] = True
    if include_boundary:
        rows, cols = polygon_perimeter(voxels[:, 1], voxels[:, 0], shape=shape)
        plane[rows, cols] = True
    mask[k] ^= plane


def read_rtstruct(
    path: str | Path, reference: Volume, include_boundary: bool = False
) -> dict[str, np.ndarray]:
    """ROI name -> bool mask [z, y, x] on ``reference``'s grid, from an RTSTRUCT file.

    Each CLOSED_PLANAR contour is mapped to voxel coordinates, put on the slice within half a step of it,
    filled over pixel centres (skimage.draw.polygon) and XOR-combined within its slice, so a contour
    inside another is a hole. Point and open contours have no area and are skipped.
    ``include_boundary=True`` also marks the pixels the contour line passes through (as fillPoly-style
    rasterisers do); masks then grow by about half a pixel all round.
    """
    path = Path(path)
    ds = read_dataset(path, header_only=False)
    modality = str(ds.get("Modality", ""))
    if modality != "RTSTRUCT":
        raise InputError(f"{path}: not an RTSTRUCT file (Modality {modality or 'missing'})")
    check_referenced_series(path, _referenced_series(ds), reference, "RTSTRUCT")

    names = {int(roi.ROINumber): str(roi.ROIName) for roi in ds.get("StructureSetROISequence", [])}
    masks: dict[str, np.ndarray] = {}
    drawn: set[int] = set()
    for roi_contour in ds.get("ROIContourSequence", []):
        number = int(roi_contour.ReferencedROINumber)
        name = names.get(number, f"ROI {number}")
        mask = np.zeros(reference.shape, dtype=bool)
        for contour in roi_contour.get("ContourSequence", []):
            _draw_contour(contour, name, path, reference, include_boundary, mask)
        masks[_unique_name(name, number, masks)] = mask
        drawn.add(number)
    for number, name in names.items():  # ROIs declared without any contour item
        if number not in drawn:
            masks[_unique_name(name, number, masks)] = np.zeros(reference.shape, dtype=bool)
    return masks
