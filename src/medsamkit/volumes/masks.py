"""Predicted label maps on disk: where evaluate-volume keeps them, atomic NIfTI writes, reading given ones."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from medsamkit.core.atomic import write_atomic
from medsamkit.core.errors import InputError
from medsamkit.io.datasets import VolumeCase
from medsamkit.io.nifti_nrrd import write_nifti
from medsamkit.io.volume import Volume
from medsamkit.io.volume_reader import read_label_volume


def mask_file_name(volume_name: str) -> str:
    """File name under which a volume's predicted label map is saved (and looked up with ``predictions``)."""
    return f"{volume_name.replace('/', '_')}.nii.gz"


def variant_folder(out: str | Path, variant: str) -> Path:
    """OUT/masks/<variant> (``/`` and ``:`` of variant names made file-safe)."""
    return Path(out) / "masks" / variant.replace("/", "_").replace(":", "_")


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


def read_prediction(predictions: str | Path, case: VolumeCase, n_volumes: int, data: str) -> np.ndarray:
    """The user's label map for ``case``: the file itself (one-volume data) or FOLDER/<volume>.nii.gz."""
    path = Path(predictions)
    if path.is_dir():
        path = path / mask_file_name(case.name)
    elif n_volumes != 1:
        raise InputError(f"{path}: with {n_volumes} volumes, --predictions must be a folder of "
                         "<volume>.nii.gz files")
    if "volume" not in case.meta:
        raise InputError(f"{data}: volume {case.name} has no grid to check predictions against")
    return read_label_volume(path, case.meta["volume"]).array
