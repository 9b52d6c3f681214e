"""Predicted label maps on disk: where evaluate-volume keeps them, reading given ones; written atomically by
``io.nifti_nrrd.write_label_map``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.io.datasets import VolumeCase
from medsamkit.io.nifti_nrrd import write_label_map
from medsamkit.io.volume_reader import read_label_volume

__all__ = ["mask_file_name", "read_prediction", "variant_folder", "write_label_map"]


def mask_file_name(volume_name: str) -> str:
    """File name under which a volume's predicted label map is saved (and looked up with ``predictions``)."""
    return f"{volume_name.replace('/', '_')}.nii.gz"


def variant_folder(out: str | Path, variant: str) -> Path:
    """OUT/masks/<variant> (``/`` and ``:`` of variant names made file-safe)."""
    return Path(out) / "masks" / variant.replace("/", "_").replace(":", "_")


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
