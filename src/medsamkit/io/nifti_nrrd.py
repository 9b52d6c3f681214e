"""NIfTI (.nii, .nii.gz) and NRRD (.nrrd, .nhdr) files as `Volume`s, and label / image arrays written back.

Readers keep the stored voxel order and turn LPS / LAS NRRD spaces into the RAS affine (see
`medsamkit.io.volume` for the conventions); writers put an array on a reference volume's grid.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np

from medsamkit.core.atomic import write_atomic
from medsamkit.core.errors import InputError
from medsamkit.io.volume import LPS_TO_RAS, Volume, first_line, label_dtype, spacing_from_affine


def _as_three_axes(data: np.ndarray, path: Path) -> np.ndarray:
    """Drop trailing singleton axes and give 2D images one slice, so the data is (x, y, z)."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)}")
    return data


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
        raise InputError(f"{path}: cannot read NIfTI ({first_line(err)})") from err
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
    out_dtype = np.dtype(dtype) if dtype is not None else label_dtype(array)
    data = array.astype(out_dtype, copy=False).transpose(2, 1, 0)
    image = nib.Nifti1Image(data, like.affine)
    # code 1 (scanner) in both forms so every reader, qform- or sform-first, sees the same geometry.
    image.set_sform(like.affine, code=1)
    image.set_qform(like.affine, code=1)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def write_label_map(array: np.ndarray, path: str | Path, like: Volume) -> Path:
    """Write a label map as NIfTI on ``like``'s grid atomically: a reader never sees a half-written file."""
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise InputError(f"{path}: output must be a NIfTI file (.nii or .nii.gz)")
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(fh) -> None:
        # nibabel picks the format from the file name, so it writes a properly named scratch file that
        # is copied into the temporary file beside the target.
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".nifti-") as scratch:
            fh.write(write_nifti(array, Path(scratch) / path.name, like=like).read_bytes())

    return write_atomic(path, write)


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
        raise InputError(f"{path}: cannot read NRRD ({first_line(err)})") from err
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
    out_dtype = np.dtype(dtype) if dtype is not None else label_dtype(array)
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
