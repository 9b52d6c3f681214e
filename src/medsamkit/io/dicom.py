"""DICOM to medsamkit volumes: one image series (sorted along the slice normal, in HU), and RTSTRUCT
contours or SEG segments turned into boolean masks on that series' grid.

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
from skimage.draw import polygon, polygon_perimeter

from medsamkit.core.errors import InputError
from medsamkit.io.volume import DICOM_FILE_SUFFIXES, LPS_TO_RAS, Volume

#: Modalities that live beside image series but carry no slice of the image.
NON_IMAGE_MODALITIES = frozenset({"RTSTRUCT", "SEG", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG"})

#: A gap larger than this many median steps means slices are missing.
MISSING_SLICE_FACTOR = 1.5


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder: its UID, modality, description and files (in folder order)."""

    series_uid: str
    modality: str
    description: str
    files: tuple[Path, ...]
    is_image: bool


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _read_dataset(path: Path, header_only: bool) -> Dataset:
    """Read one DICOM file, turning any parser failure into an `InputError` that names the file."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=header_only)
    except Exception as err:  # InvalidDicomError, EOFError, struct errors from truncated files, ...
        raise InputError(f"{path}: unreadable DICOM file ({_first_line(err)})") from err


def _is_image(ds: Dataset) -> bool:
    return (
        str(ds.get("Modality", "")).upper() not in NON_IMAGE_MODALITIES
        and "Rows" in ds
        and "ImagePositionPatient" in ds
    )


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
                raise InputError(f"{path}: unreadable DICOM file ({_first_line(err)})") from err
            continue  # a README, JSON sidecar, image, ... beside the series
        except Exception as err:
            raise InputError(f"{path}: unreadable DICOM file ({_first_line(err)})") from err
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
                is_image=any(_is_image(ds) for _, ds in members),
            )
        )
    return sorted(infos, key=lambda info: (-len(info.files), info.series_uid))


def series_uid_of(path: str | Path) -> str:
    """The SeriesInstanceUID of one DICOM file."""
    ds = _read_dataset(Path(path), header_only=True)
    if "SeriesInstanceUID" not in ds:
        raise InputError(f"{path}: DICOM file has no SeriesInstanceUID")
    return str(ds.SeriesInstanceUID)


def _describe(uid: str, members: Sequence[tuple[Path, Dataset]]) -> str:
    return f"{uid} ({members[0][1].get('Modality', '?')}, {len(members)} files)"


def _floats(ds: Dataset, keyword: str, path: Path, count: int) -> np.ndarray:
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


def _pixel_spacing(ds: Dataset, path: Path) -> np.ndarray:
    keyword = "PixelSpacing" if "PixelSpacing" in ds else "ImagerPixelSpacing"
    return _floats(ds, keyword, path, 2)


def _select_series(folder: Path, series_uid: str | None) -> tuple[str, list[tuple[Path, Dataset]]]:
    groups = _scan_folder(folder)
    images = {
        uid: [(p, ds) for p, ds in members if _is_image(ds)]
        for uid, members in groups.items()
        if any(_is_image(ds) for _, ds in members)
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


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read the one image series in ``folder`` (or the one named ``series_uid``) as a HU float32 `Volume`.

    RTSTRUCT / SEG files beside it are ignored. Inconsistent series (mixed orientation, size or pixel
    spacing, duplicate or missing slices, irregular slice steps, undecodable pixels) raise `InputError`.
    """
    folder = Path(folder)
    uid, members = _select_series(folder, series_uid)
    first_path, first = members[0]
    orientation = _floats(first, "ImageOrientationPatient", first_path, 6)
    size = (int(first.Rows), int(first.Columns))
    pixel_spacing = _pixel_spacing(first, first_path)
    for path, ds in members:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(
                f"{path}: multi-frame (enhanced) DICOM images are not supported; export single frames"
            )
        other = _floats(ds, "ImageOrientationPatient", path, 6)
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
        other_spacing = _pixel_spacing(ds, path)
        if np.abs(other_spacing - pixel_spacing).max() > 1e-4:
            raise InputError(
                f"{folder}: mixed pixel spacing in series {uid}: {first_path.name} "
                f"{pixel_spacing.tolist()} vs {path.name} {other_spacing.tolist()}"
            )

    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.stack([_floats(ds, "ImagePositionPatient", p, 3) for p, ds in members])
    along_normal = positions @ normal
    order = np.argsort(along_normal, kind="stable")
    members = [members[i] for i in order]
    positions, along_normal = positions[order], along_normal[order]
    step = _check_slice_steps(folder, uid, members, along_normal)

    slices = []
    for path, _ in members:
        ds = _read_dataset(path, header_only=False)
        try:
            pixels = ds.pixel_array
        except Exception as err:  # missing decoder plugin, truncated pixel data, ...
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
            raise InputError(
                f"{path}: cannot decode pixel data (transfer syntax {syntax}: {_first_line(err)})"
            ) from err
        if pixels.shape != size:
            raise InputError(f"{path}: pixel data shape {pixels.shape} is not one {size} grey-level image")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        slices.append(pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    array = np.stack(slices)

    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel_spacing[1]  # moving along a row = next column = x
    lps[:3, 1] = col_dir * pixel_spacing[0]
    if len(members) > 1:
        # the mean position step (not normal * step) keeps gantry-tilted series sheared correctly
        lps[:3, 2] = (positions[-1] - positions[0]) / (len(members) - 1)
    else:
        lps[:3, 2] = normal * step
    lps[:3, 3] = positions[0]
    affine = LPS_TO_RAS @ lps

    meta = {
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
    spacing = (float(step), float(pixel_spacing[0]), float(pixel_spacing[1]))
    return Volume(array, spacing, affine, str(folder), meta)


def _check_slice_steps(
    folder: Path, uid: str, members: Sequence[tuple[Path, Dataset]], along_normal: np.ndarray
) -> float:
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


def _lps_to_voxel(points_lps: np.ndarray, reference: Volume) -> np.ndarray:
    """Patient LPS mm points (N, 3) -> continuous voxel indices (N, 3) as (x, y, z) of ``reference``."""
    ras = points_lps * np.array([-1.0, -1.0, 1.0])
    homogeneous = np.c_[ras, np.ones(len(ras))]
    return (np.linalg.inv(reference.affine) @ homogeneous.T).T[:, :3]


def _slice_index(voxel_z: float, reference: Volume, where: str) -> int:
    """The slice within half a step of a continuous z index, else `InputError` naming the position."""
    k = int(np.rint(voxel_z))
    if abs(voxel_z - k) > 0.5 + 1e-6 or not 0 <= k < reference.shape[0]:
        raise InputError(f"{where} lies on no slice of {reference.source}")
    return k


def _check_referenced_series(path: Path, referenced: set[str], reference: Volume, kind: str) -> None:
    expected = reference.meta.get("SeriesInstanceUID")
    if referenced and expected and expected not in referenced:
        raise InputError(
            f"{path}: {kind} refers to series {', '.join(sorted(referenced))}, not to series {expected} "
            f"of {reference.source}"
        )


def _rtstruct_referenced_series(ds: Dataset) -> set[str]:
    uids = set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if "SeriesInstanceUID" in series:
                    uids.add(str(series.SeriesInstanceUID))
    return uids


def _unique_name(name: str, number: int, taken: dict[str, np.ndarray]) -> str:
    return name if name not in taken else f"{name} ({number})"


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
    ds = _read_dataset(path, header_only=False)
    modality = str(ds.get("Modality", ""))
    if modality != "RTSTRUCT":
        raise InputError(f"{path}: not an RTSTRUCT file (Modality {modality or 'missing'})")
    _check_referenced_series(path, _rtstruct_referenced_series(ds), reference, "RTSTRUCT")

    names = {int(roi.ROINumber): str(roi.ROIName) for roi in ds.get("StructureSetROISequence", [])}
    n_rows, n_cols = reference.shape[1:]
    masks: dict[str, np.ndarray] = {}
    drawn: set[int] = set()
    for roi_contour in ds.get("ROIContourSequence", []):
        number = int(roi_contour.ReferencedROINumber)
        name = names.get(number, f"ROI {number}")
        mask = np.zeros(reference.shape, dtype=bool)
        for contour in roi_contour.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue
            points = np.asarray([float(v) for v in contour.ContourData], dtype=float).reshape(-1, 3)
            if len(points) < 3:
                continue
            voxels = _lps_to_voxel(points, reference)
            where = f"{path}: contour of ROI '{name}' at z={points[:, 2].mean():.2f} mm"
            if np.ptp(voxels[:, 2]) > 0.5:
                raise InputError(f"{where} is not parallel to the slices of {reference.source}")
            k = _slice_index(float(voxels[:, 2].mean()), reference, where)
            rows, cols = polygon(voxels[:, 1], voxels[:, 0], shape=(n_rows, n_cols))
            plane = np.zeros((n_rows, n_cols), dtype=bool)
            plane[rows, cols] = True
            if include_boundary:
                rows, cols = polygon_perimeter(voxels[:, 1], voxels[:, 0], shape=(n_rows, n_cols))
                plane[rows, cols] = True
            mask[k] ^= plane
        masks[_unique_name(name, number, masks)] = mask
        drawn.add(number)
    for number, name in names.items():  # ROIs declared without any contour item
        if number not in drawn:
            masks[_unique_name(name, number, masks)] = np.zeros(reference.shape, dtype=bool)
    return masks


def _functional_group(
    frame: Dataset, shared: Dataset | None, keyword: str, path: Path, index: int
) -> Dataset:
    for group in (frame, shared):
        if group is not None and keyword in group and len(group[keyword].value) > 0:
            return group[keyword].value[0]
    raise InputError(f"{path}: frame {index} has no {keyword}")


def read_dicom_seg(path: str | Path, reference: Volume) -> dict[str, np.ndarray]:
    """Segment label -> bool mask [z, y, x] on ``reference``'s grid, from a DICOM SEG file.

    Frames are placed by their PlanePositionSequence; they must share the reference's orientation, pixel
    spacing and in-plane grid (no resampling). FRACTIONAL segments are thresholded at half the maximum.
    """
    path = Path(path)
    ds = _read_dataset(path, header_only=False)
    modality = str(ds.get("Modality", ""))
    if modality != "SEG":
        raise InputError(f"{path}: not a DICOM SEG file (Modality {modality or 'missing'})")
    referenced = {
        str(item.SeriesInstanceUID)
        for item in ds.get("ReferencedSeriesSequence", [])
        if "SeriesInstanceUID" in item
    }
    _check_referenced_series(path, referenced, reference, "SEG")

    labels = {
        int(s.SegmentNumber): str(s.get("SegmentLabel", f"segment {s.SegmentNumber}"))
        for s in ds.get("SegmentSequence", [])
    }
    n_rows, n_cols = reference.shape[1:]
    if (int(ds.Rows), int(ds.Columns)) != (n_rows, n_cols):
        raise InputError(
            f"{path}: SEG frames are {int(ds.Rows)}x{int(ds.Columns)}, the slices of {reference.source} "
            f"are {n_rows}x{n_cols}"
        )
    try:
        pixels = ds.pixel_array
    except Exception as err:
        raise InputError(f"{path}: cannot decode SEG pixel data ({_first_line(err)})") from err
    if pixels.ndim == 2:
        pixels = pixels[None]
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        maximum = float(ds.get("MaximumFractionalValue", 255) or 255)
        frames_on = pixels.astype(np.float32) >= 0.5 * maximum
    else:
        frames_on = pixels > 0

    lps_ref = LPS_TO_RAS @ np.asarray(reference.affine, dtype=float)
    ref_row_dir = lps_ref[:3, 0] / np.linalg.norm(lps_ref[:3, 0])
    ref_col_dir = lps_ref[:3, 1] / np.linalg.norm(lps_ref[:3, 1])
    ref_pixel_spacing = np.array(reference.spacing[1:])
    shared_groups = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    if len(per_frame) != len(frames_on):
        raise InputError(f"{path}: {len(frames_on)} frames but {len(per_frame)} per-frame functional groups")

    masks = {label: np.zeros(reference.shape, dtype=bool) for label in labels.values()}
    for index, frame in enumerate(per_frame):
        number = int(
            _functional_group(
                frame, None, "SegmentIdentificationSequence", path, index
            ).ReferencedSegmentNumber
        )
        label = labels.get(number, f"segment {number}")
        orientation = np.asarray(
            [
                float(v)
                for v in _functional_group(
                    frame, shared, "PlaneOrientationSequence", path, index
                ).ImageOrientationPatient
            ]
        )
        spacing = np.asarray(
            [
                float(v)
                for v in _functional_group(frame, shared, "PixelMeasuresSequence", path, index).PixelSpacing
            ]
        )
        if (
            np.abs(orientation[:3] - ref_row_dir).max() > 1e-3
            or np.abs(orientation[3:] - ref_col_dir).max() > 1e-3
            or np.abs(spacing - ref_pixel_spacing).max() > 1e-3
        ):
            raise InputError(
                f"{path}: frame {index} orientation/pixel spacing differs from the slices of {reference.source}"
            )
        position = np.asarray(
            [
                float(v)
                for v in _functional_group(
                    frame, shared, "PlanePositionSequence", path, index
                ).ImagePositionPatient
            ]
        )
        voxel = _lps_to_voxel(position[None], reference)[0]
        if np.abs(voxel[:2]).max() > 0.01:
            raise InputError(
                f"{path}: frame {index} is shifted in-plane against the grid of {reference.source}"
            )
        k = _slice_index(float(voxel[2]), reference, f"{path}: frame {index} at z={position[2]:.2f} mm")
        masks.setdefault(label, np.zeros(reference.shape, dtype=bool))[k] |= frames_on[index]
    return masks
