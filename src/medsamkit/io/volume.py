"""3D volumes with their geometry: the `Volume` dataclass, NIfTI / NRRD read and write, `read_volume`.

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

import nibabel as nib
import nrrd
import numpy as np

from medsamkit.core.errors import InputError

#: x and y change sign between DICOM/NRRD LPS and NIfTI RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
DICOM_FILE_SUFFIXES = (".dcm", ".dicom", ".ima")


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


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _as_three_axes(data: np.ndarray, path: Path) -> np.ndarray:
    """Drop trailing singleton axes and give 2D images one slice, so the data is (x, y, z)."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)}")
    return data


def _file_suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_nifti(path: str | Path) -> Volume:
    """Read a .nii / .nii.gz file as a `Volume` (stored voxel order, affine as nibabel reports it)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        image = nib.load(str(path))
        # asanyarray keeps the stored integer dtype when the header has no intensity scaling.
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises many types for corrupt / truncated files
        raise InputError(f"{path}: cannot read NIfTI ({_first_line(err)})") from err
    data = _as_three_axes(data, path)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    affine = np.asarray(image.affine, dtype=float)
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    header = image.header
    meta = {
        "format": "nifti",
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
    }
    return Volume(array, spacing_from_affine(affine), affine, str(path), meta)


def _label_dtype(array: np.ndarray) -> np.dtype:
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


def _check_writable(array: np.ndarray, path: Path, like: Volume) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != like.array.shape:
        raise InputError(
            f"{path}: array shape {tuple(array.shape)} does not match the reference grid "
            f"{tuple(like.array.shape)} of {like.source or 'the reference volume'}"
        )
    return array


def write_nifti(
    array_zyx: np.ndarray, path: str | Path, like: Volume, dtype: np.dtype | type | None = None
) -> Path:
    """Write a [z, y, x] array as NIfTI on ``like``'s grid (affine kept); labels are stored as integers.

    With ``dtype=None`` bool becomes uint8, integers the smallest of uint8/int16/uint16/int32 that holds
    them, floats float32.
    """
    path = Path(path)
    array = _check_writable(array_zyx, path, like)
    out_dtype = np.dtype(dtype) if dtype is not None else _label_dtype(array)
    data = array.astype(out_dtype, copy=False).transpose(2, 1, 0)
    image = nib.Nifti1Image(data, like.affine)
    # code 1 (scanner) in both forms so every reader, qform- or sform-first, sees the same geometry.
    image.set_sform(like.affine, code=1)
    image.set_qform(like.affine, code=1)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


_NRRD_SPACE_FLIPS = {
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
}


def read_nrrd(path: str | Path) -> Volume:
    """Read a .nrrd / .nhdr file as a `Volume`; LPS / LAS spaces are converted to the RAS affine.

    A space other than RAS / LPS / LAS (e.g. ``scanner-xyz``) is taken as RAS.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        data, header = nrrd.read(str(path))
    except Exception as err:  # pynrrd raises NRRDError, OSError, ValueError, ...
        raise InputError(f"{path}: cannot read NRRD ({_first_line(err)})") from err
    directions = header.get("space directions")
    if directions is not None:
        directions = np.asarray(directions, dtype=float)
        spatial = ~np.isnan(directions).any(axis=1)
        for axis in np.flatnonzero(~spatial):
            if data.shape[axis] != 1:
                raise InputError(
                    f"{path}: non-spatial axis {axis} of size {data.shape[axis]} (e.g. a vector or "
                    "time axis) is not supported; expected one 3D scalar volume"
                )
        data = data.reshape([n for n, keep in zip(data.shape, spatial) if keep] or [1])
        directions = directions[spatial]
        if data.ndim != 3 or directions.shape != (3, 3):
            raise InputError(f"{path}: expected a 3D volume in 3D space, got shape {tuple(data.shape)}")
        linear = directions.T  # column i is the step along axis i
    else:
        data = _as_three_axes(data, path)
        spacings = np.asarray(header.get("spacings", [1.0, 1.0, 1.0]), dtype=float)[:3]
        spacings = np.where(np.isfinite(spacings), spacings, 1.0)
        linear = np.diag(spacings)
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    origin = np.where(np.isfinite(origin), origin, 0.0)[:3]
    space = str(header.get("space", "right-anterior-superior")).lower()
    flip = np.asarray(_NRRD_SPACE_FLIPS.get(space, (1.0, 1.0, 1.0)))
    affine = np.eye(4)
    affine[:3, :3] = flip[:, None] * linear
    affine[:3, 3] = flip * origin
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    meta = {"format": "nrrd", "space": space}
    return Volume(array, spacing_from_affine(affine), affine, str(path), meta)


def write_nrrd(
    array_zyx: np.ndarray, path: str | Path, like: Volume, dtype: np.dtype | type | None = None
) -> Path:
    """Write a [z, y, x] array as gzip NRRD in LPS space (as 3D Slicer does) on ``like``'s grid."""
    path = Path(path)
    array = _check_writable(array_zyx, path, like)
    out_dtype = np.dtype(dtype) if dtype is not None else _label_dtype(array)
    data = np.asfortranarray(array.astype(out_dtype, copy=False).transpose(2, 1, 0))
    lps = LPS_TO_RAS @ np.asarray(like.affine, dtype=float)  # the flip is its own inverse
    header = {
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T,
        "space origin": lps[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), data, header, index_order="F")
    return path


def read_volume(path: str | Path) -> Volume:
    """Read any supported volume: NIfTI, NRRD, a DICOM series folder, or the series of one DICOM file."""
    path = Path(path)
    if path.is_dir():
        from medsamkit.io.dicom import read_dicom_series  # dicom.py imports this module

        return read_dicom_series(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    suffix = _file_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path)
    if suffix in NRRD_SUFFIXES:
        return read_nrrd(path)
    if suffix in DICOM_FILE_SUFFIXES:
        from medsamkit.io.dicom import read_dicom_series, series_uid_of

        return read_dicom_series(path.parent, series_uid=series_uid_of(path))
    raise InputError(
        f"{path}: unsupported volume format {suffix or '(no suffix)'}; expected .nii, .nii.gz, .nrrd, "
        ".nhdr, .dcm or a DICOM series folder"
    )


def check_same_grid(label: Volume, image: Volume, atol_mm: float = 1e-3) -> None:
    """Raise `InputError` naming both files when ``label`` is not on ``image``'s voxel grid.

    The affines are compared in mm: ``atol_mm`` (default 1 micrometre) allows float round-off in headers.
    """
    if label.array.shape != image.array.shape:
        raise InputError(
            f"{label.source}: label shape {tuple(label.array.shape)} does not match image shape "
            f"{tuple(image.array.shape)} of {image.source}"
        )
    diff = float(np.abs(np.asarray(label.affine, float) - np.asarray(image.affine, float)).max())
    if diff > atol_mm:
        raise InputError(
            f"{label.source}: label affine differs from the affine of {image.source} by up to "
            f"{diff:.4g} mm (not the same voxel grid)"
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
    label.array = array.astype(_label_dtype(array), copy=False)
    return label
