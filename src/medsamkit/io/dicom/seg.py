"""DICOM SEG files: each segment's frames placed, by their plane position, as a bool mask on a series' grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medsamkit.core.errors import InputError
from medsamkit.io.dicom.files import read_dataset
from medsamkit.io.dicom.grid import check_referenced_series, lps_to_voxel, slice_index
from medsamkit.io.volume import LPS_TO_RAS, Volume, first_line


def _functional_group(
    frame: Dataset, shared: Dataset | None, keyword: str, path: Path, index: int
) -> Dataset:
    for group in (frame, shared):
        if group is not None and keyword in group and len(group[keyword].value) > 0:
            return group[keyword].value[0]
    raise InputError(f"{path}: frame {index} has no {keyword}")


def _group_floats(frame: Dataset, shared: Dataset | None, keyword: str, attribute: str, path: Path,
                  index: int) -> np.ndarray:
    """The numbers of ``attribute`` inside a frame's (or the shared) functional group ``keyword``."""
    group = _functional_group(frame, shared, keyword, path, index)
    return np.asarray([float(v) for v in getattr(group, attribute)])


def _open_seg(path: Path, reference: Volume) -> tuple[Dataset, dict[int, str]]:
    """The SEG dataset (checked: modality, referenced series, frame size) and segment number -> label."""
    ds = read_dataset(path, header_only=False)
    modality = str(ds.get("Modality", ""))
    if modality != "SEG":
        raise InputError(f"{path}: not a DICOM SEG file (Modality {modality or 'missing'})")
    referenced = {
        str(item.SeriesInstanceUID)
        for item in ds.get("ReferencedSeriesSequence", [])
        if "SeriesInstanceUID" in item
    }
    check_referenced_series(path, referenced, reference, "SEG")
    n_rows, n_cols = reference.shape[1:]
    if (int(ds.Rows), int(ds.Columns)) != (n_rows, n_cols):
        raise InputError(
            f"{path}: SEG frames are {int(ds.Rows)}x{int(ds.Columns)}, the slices of {reference.source} "
            f"are {n_rows}x{n_cols}"
        )
    labels = {
        int(s.SegmentNumber): str(s.get("SegmentLabel", f"segment {s.SegmentNumber}"))
        for s in ds.get("SegmentSequence", [])
    }
    return ds, labels


def _frames_on(ds: Dataset, path: Path) -> np.ndarray:
    """Bool frames (F, rows, cols); FRACTIONAL segments are thresholded at half the maximum."""
    try:
        pixels = ds.pixel_array
    except Exception as err:
        raise InputError(f"{path}: cannot decode SEG pixel data ({first_line(err)})") from err
    if pixels.ndim == 2:
        pixels = pixels[None]
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        maximum = float(ds.get("MaximumFractionalValue", 255) or 255)
        return pixels.astype(np.float32) >= 0.5 * maximum
    return pixels > 0


def _frame_slice(frame: Dataset, shared: Dataset | None, path: Path, index: int, reference: Volume) -> int:
    """The reference slice a frame lies on; `InputError` when its plane does not match the slices."""
    lps_ref = LPS_TO_RAS @ np.asarray(reference.affine, dtype=float)
    ref_row_dir = lps_ref[:3, 0] / np.linalg.norm(lps_ref[:3, 0])
    ref_col_dir = lps_ref[:3, 1] / np.linalg.norm(lps_ref[:3, 1])
    orientation = _group_floats(frame, shared, "PlaneOrientationSequence", "ImageOrientationPatient", path, index)
    spacing = _group_floats(frame, shared, "PixelMeasuresSequence", "PixelSpacing", path, index)
    if (
        np.abs(orientation[:3] - ref_row_dir).max() > 1e-3
        or np.abs(orientation[3:] - ref_col_dir).max() > 1e-3
        or np.abs(spacing - np.array(reference.spacing[1:])).max() > 1e-3
    ):
        raise InputError(
            f"{path}: frame {index} orientation/pixel spacing differs from the slices of {reference.source}"
        )
    position = _group_floats(frame, shared, "PlanePositionSequence", "ImagePositionPatient", path, index)
    voxel = lps_to_voxel(position[None], reference)[0]
    if np.abs(voxel[:2]).max() > 0.01:
        raise InputError(f"{path}: frame {index} is shifted in-plane against the grid of {reference.source}")
    return slice_index(float(voxel[2]), reference, f"{path}: frame {index} at z={position[2]:.2f} mm")


def read_dicom_seg(path: str | Path, reference: Volume) -> dict[str, np.ndarray]:
    """Segment label -> bool mask [z, y, x] on ``reference``'s grid, from a DICOM SEG file.

    Frames are placed by their PlanePositionSequence; they must share the reference's orientation, pixel
    spacing and in-plane grid (no resampling). FRACTIONAL segments are thresholded at half the maximum.
    """
    path = Path(path)
    ds, labels = _open_seg(path, reference)
    frames_on = _frames_on(ds, path)
    shared_groups = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    if len(per_frame) != len(frames_on):
        raise InputError(f"{path}: {len(frames_on)} frames but {len(per_frame)} per-frame functional groups")
    masks = {label: np.zeros(reference.shape, dtype=bool) for label in labels.values()}
    for index, frame in enumerate(per_frame):
        segment = _functional_group(frame, None, "SegmentIdentificationSequence", path, index)
        number = int(segment.ReferencedSegmentNumber)
        label = labels.get(number, f"segment {number}")
        k = _frame_slice(frame, shared, path, index, reference)
        masks.setdefault(label, np.zeros(reference.shape, dtype=bool))[k] |= frames_on[index]
    return masks
