"""A real CT volume small enough for the default suite: builtin:lung-gtv pat_4 around the GTV's largest slice,
written as NIfTI image + label on its own (shifted) grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsamkit.io.datasets import open_dataset
from medsamkit.io.nifti_nrrd import write_nifti
from medsamkit.io.volume import Volume


def lung_case(patient: str):
    """One builtin:lung-gtv patient's VolumeCase (label 1 = GTV)."""
    return next(c for c in open_dataset("builtin:lung-gtv").items() if c.name.endswith(patient))


def write_gtv_crop(folder: Path, half: int = 3, patient: str = "pat_4") -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """(image, label, truth (Z, Y, X) bool, affine): slices largest-half .. largest+half as NIfTI."""
    case = lung_case(patient)
    vol, truth = case.meta["volume"], case.label == 1
    zc = int(truth.sum((1, 2)).argmax())
    z0 = zc - half
    affine = np.array(vol.affine, dtype=float)
    affine[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, z0]) + affine[:3, 3]
    crop = slice(z0, zc + half + 1)
    grid = Volume(vol.array[crop], vol.spacing, affine, "crop")
    image, label = folder / "ct.nii.gz", folder / "gtv.nii.gz"
    write_nifti(vol.array[crop].astype(np.int16), image, like=grid)
    write_nifti(truth[crop].astype(np.uint8), label, like=grid)
    return image, label, truth[crop], affine


def write_flipped_gtv(folder):
    """builtin:lung-gtv pat_2 around its largest GTV slice (5 slices, the GTV kept on the middle 3 so the default
    suite encodes only 3), written with its x axis reversed."""
    case = lung_case("pat_2")
    vol, truth = case.meta["volume"], case.label == 1
    z = int(truth.sum((1, 2)).argmax())
    crop = slice(z - 2, z + 3)
    truth = truth.copy()
    truth[: z - 1] = False
    truth[z + 2 :] = False
    affine = np.array(vol.affine, dtype=float)
    n_x = vol.array.shape[2]
    affine[:3, 3] = affine[:3, :3] @ np.array([n_x - 1.0, 0.0, crop.start]) + affine[:3, 3]
    affine[:3, 0] *= -1  # the first voxel axis now runs the other way
    grid = Volume(vol.array[crop][:, :, ::-1], vol.spacing, affine, "flipped")
    image, label = folder / "ct.nii.gz", folder / "gtv.nii.gz"
    write_nifti(vol.array[crop][:, :, ::-1].astype(np.int16), image, like=grid)
    write_nifti(truth[crop][:, :, ::-1].astype(np.uint8), label, like=grid)
    return image, label
