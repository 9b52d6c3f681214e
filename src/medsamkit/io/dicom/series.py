"""DICOM image series as `Volume`s: find the series in a folder, sort the slices along the normal, read HU.

Geometry follows DICOM PS3.3 C.7.6.2: ImageOrientationPatient holds the row and column direction cosines
(LPS), their cross product is the slice normal, ImagePositionPatient is the centre of the first pixel, and
PixelSpacing is (row spacing, column spacing) = (y, x). Slices are ordered by their position projected on
the normal, so ``array[z]`` increases along it. The `Volume` affine is RAS (x and y rows of LPS negated);
see `medsamkit.io.volume` for the axis conventions. Only the given folder is read (no recursion).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medsamkit.core.errors import InputError
from medsamkit.io.dicom.files import dicom_floats, is_image, pixel_spacing, read_dataset
from medsamkit.io.volume import DICOM_FILE_SUFFIXES, LPS_TO_RAS, Volume, first_line

#: A gap larger than this many median steps means slices are missing.
MISSING_SLICE_FACTOR = 1.5

Members = Sequence[tuple[Path, Dataset]]


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder: its UID, modality, description and files (in folder order)."""

    series_uid: str
    modality: str
    description: str
    files: tuple[Path, ...]
    is_image: bool


def _scan_folder(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """Headers of every DICOM file in ``folder``, grouped by SeriesInstanceUID.

    Files that are not DICOM are skipped unless their suffix says DICOM (.dcm/.dicom/.ima), which is
    then reported as unreadable.
    """
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except InvalidDicomError as err:
            if path.suffix.lower() in DICOM_FILE_SUFFIXES:
                raise InputError(f"{path}: unreadable DICOM file ({first_line(err)})") from err
            continue  # a README, JSON sidecar, image, ... beside the series
        except Exception as err:
            raise InputError(f"{path}: unreadable DICOM file ({first_line(err)})") from err
        if "SOPClassUID" not in ds and "Modality" not in ds:
            continue  # DICOMDIR and similar
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    return groups


def list_dicom_series(folder: str | Path) -> list[SeriesInfo]:
    """All series in a folder (image series and RTSTRUCT / SEG / ... files), largest first."""
    infos = []
    for uid, members in _scan_folder(Path(folder)).items():
        first = members[0][1]
        infos.append(
            SeriesInfo(
                series_uid=uid,
                modality=str(first.get("Modality", "")),
                description=str(first.get("SeriesDescription", "")),
                files=tuple(p for p, _ in members),
                is_image=any(is_image(ds) for _, ds in members),
            )
        )
    return sorted(infos, key=lambda info: (-len(info.files), info.series_uid))


def series_uid_of(path: str | Path) -> str:
    """The SeriesInstanceUID of one DICOM file."""
    ds = read_dataset(Path(path), header_only=True)
    if "SeriesInstanceUID" not in ds:
        raise InputError(f"{path}: DICOM file has no SeriesInstanceUID")
    return str(ds.SeriesInstanceUID)


def _describe(uid: str, members: Members) -> str:
    return f"{uid} ({members[0][1].get('Modality', '?')}, {len(members)} files)"


def _select_series(folder: Path, series_uid: str | None) -> tuple[str, list[tuple[Path, Dataset]]]:
    groups = _scan_folder(folder)
    images = {
        uid: [(p, ds) for p, ds in members if is_image(ds)]
        for uid, members in groups.items()
        if any(is_image(ds) for _, ds in members)
    }
    if series_uid is not None:
        if series_uid not in images:
            found = ", ".join(_describe(u, m) for u, m in images.items()) or "none"
            raise InputError(f"{folder}: no image series {series_uid} (image series found: {found})")
        return series_uid, images[series_uid]
    if not images:
        others = sum(len(m) for m in groups.values())
        raise InputError(f"{folder}: no DICOM image files found ({others} non-image DICOM files)")
    if len(images) > 1:
        found = ", ".join(_describe(u, m) for u, m in images.items())
        raise InputError(f"{folder}: {len(images)} image series found: {found}; choose one with series_uid")
    uid = next(iter(images))
    return uid, images[uid]


def _check_uniform(folder: Path, uid: str, members: Members) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """Orientation, (rows, columns) and pixel spacing shared by every slice; `InputError` when mixed."""
    first_path, first = members[0]
    orientation = dicom_floats(first, "ImageOrientationPatient", first_path, 6)
    size = (int(first.Rows), int(first.Columns))
    spacing_yx = pixel_spacing(first, first_path)
    for path, ds in members:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(
                f"{path}: multi-frame (enhanced) DICOM images are not supported; export single frames"
            )
        other = dicom_floats(ds, "ImageOrientationPatient", path, 6)
        if np.abs(other - orientation).max() > 1e-4:
            raise InputError(
                f"{folder}: mixed image orientation in series {uid}: {first_path.name} "
                f"{orientation.round(4).tolist()} vs {path.name} {other.round(4).tolist()}"
            )
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise InputError(
                f"{folder}: mixed image size in series {uid}: {first_path.name} {size} vs "
                f"{path.name} {(int(ds.Rows), int(ds.Columns))}"
            )
        other_spacing = pixel_spacing(ds, path)
        if np.abs(other_spacing - spacing_yx).max() > 1e-4:
            raise InputError(
                f"{folder}: mixed pixel spacing in series {uid}: {first_path.name} "
                f"{spacing_yx.tolist()} vs {path.name} {other_spacing.tolist()}"
            )
    return orientation, size, spacing_yx


def _check_slice_steps(folder: Path, uid: str, members: Members, along_normal: np.ndarray) -> float:
    """The slice step in mm; duplicate, missing or irregularly spaced slices raise `InputError`."""
    if len(members) == 1:
        thickness = members[0][1].get("SliceThickness")
        return float(thickness) if thickness not in (None, "") and float(thickness) > 0 else 1.0
    steps = np.diff(along_normal)
    bad = np.flatnonzero(steps < 1e-3)
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{folder}: two slices of series {uid} at the same position {along_normal[i]:.2f} mm: "
            f"{members[i][0].name} and {members[i + 1][0].name}"
        )
    median = float(np.median(steps))
    bad = np.flatnonzero(steps > MISSING_SLICE_FACTOR * median)
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{folder}: missing slices in series {uid}: gap of {steps[i]:.2f} mm between "
            f"{along_normal[i]:.2f} and {along_normal[i + 1]:.2f} mm (median step {median:.2f} mm)"
        )
    # 2% (at least 0.01 mm) allows header round-off while catching mixed reconstruction intervals.
    tolerance = max(0.01, 0.02 * median)
    bad = np.flatnonzero(np.abs(steps - median) > tolerance)
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{folder}: mixed slice spacing in series {uid}: step of {steps[i]:.3f} mm after "
            f"{along_normal[i]:.2f} mm (median step {median:.3f} mm)"
        )
    return float((along_normal[-1] - along_normal[0]) / (len(members) - 1))


def _slice_hu(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One slice's pixels in HU (RescaleSlope / RescaleIntercept applied) as float32."""
    ds = read_dataset(path, header_only=False)
    try:
        pixels = ds.pixel_array
    except Exception as err:  # missing decoder plugin, truncated pixel data, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise InputError(
            f"{path}: cannot decode pixel data (transfer syntax {syntax}: {first_line(err)})"
        ) from err
    if pixels.shape != size:
        raise InputError(f"{path}: pixel data shape {pixels.shape} is not one {size} grey-level image")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _series_affine(
    orientation: np.ndarray, spacing_yx: np.ndarray, positions: np.ndarray, step: float
) -> np.ndarray:
    """The RAS affine of slices at ``positions`` (sorted along the normal)."""
    row_dir, col_dir = orientation[:3], orientation[3:]
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing_yx[1]  # moving along a row = next column = x
    lps[:3, 1] = col_dir * spacing_yx[0]
    if len(positions) > 1:
        # the mean position step (not normal * step) keeps gantry-tilted series sheared correctly
        lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        lps[:3, 2] = np.cross(row_dir, col_dir) * step
    lps[:3, 3] = positions[0]
    return LPS_TO_RAS @ lps


def _series_meta(uid: str, members: Members, orientation: np.ndarray, positions: np.ndarray,
                 along_normal: np.ndarray) -> dict:
    """What RTSTRUCT / SEG readers and reports need to know about the series (UIDs, positions, files)."""
    first = members[0][1]
    return {
        "format": "dicom",
        "SeriesInstanceUID": uid,
        "StudyInstanceUID": str(first.get("StudyInstanceUID", "")),
        "FrameOfReferenceUID": str(first.get("FrameOfReferenceUID", "")),
        "Modality": str(first.get("Modality", "")),
        "PatientID": str(first.get("PatientID", "")),
        "SeriesDescription": str(first.get("SeriesDescription", "")),
        "ImageOrientationPatient": orientation.tolist(),
        "ImagePositionPatient": positions.tolist(),
        "slice_positions_mm": along_normal.tolist(),
        "SOPInstanceUIDs": [str(ds.get("SOPInstanceUID", "")) for _, ds in members],
        "files": [str(p) for p, _ in members],
    }


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read the one image series in ``folder`` (or the one named ``series_uid``) as a HU float32 `Volume`.

    RTSTRUCT / SEG files beside it are ignored. Inconsistent series (mixed orientation, size or pixel
    spacing, duplicate or missing slices, irregular slice steps, undecodable pixels) raise `InputError`.
    """
    folder = Path(folder)
    uid, members = _select_series(folder, series_uid)
    orientation, size, spacing_yx = _check_uniform(folder, uid, members)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.stack([dicom_floats(ds, "ImagePositionPatient", p, 3) for p, ds in members])
    order = np.argsort(positions @ normal, kind="stable")
    members = [members[i] for i in order]
    positions = positions[order]
    along_normal = positions @ normal
    step = _check_slice_steps(folder, uid, members, along_normal)
    array = np.stack([_slice_hu(path, size) for path, _ in members])
    affine = _series_affine(orientation, spacing_yx, positions, step)
    meta = _series_meta(uid, members, orientation, positions, along_normal)
    spacing = (float(step), float(spacing_yx[0]), float(spacing_yx[1]))
    return Volume(array, spacing, affine, str(folder), meta)
