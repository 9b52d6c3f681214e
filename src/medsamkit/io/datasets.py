"""Data SPECs -> datasets of 2D cases: `open_dataset`, the one entry point that dispatches a SPEC to its reader.

A SPEC is a folder with images/ + labels/ (same stems, `image_folder`), a builtin:NAME (`builtin`), a
NIfTI/NRRD image with its label given as IMAGE::LABEL (`volume_data`), an nnU-Net folder (imagesTr/ +
labelsTr/ [+ dataset.json], `nnunet`), or a DICOM series folder with an RTSTRUCT or SEG (`volume_data`).
Volumes are served slice by slice (axial), with their spacing and slice index recorded. The case types
live in `medsamkit.io.cases` and are re-exported here for the modules that open datasets.
"""

from __future__ import annotations

from pathlib import Path

from medsamkit.core.errors import InputError
from medsamkit.io.builtin import open_builtin
from medsamkit.io.cases import Case, Dataset, VolumeCase
from medsamkit.io.image_folder import image_folder_dataset
from medsamkit.io.volume import is_volume_file
from medsamkit.io.windowing import parse_window

__all__ = ["Case", "Dataset", "VolumeCase", "open_dataset"]


def open_dataset(spec: str | Path, kind: str | None = None, window: str | tuple[float, float] | None = None) -> Dataset:
    """Open a data SPEC (see module docstring); InputError with the reason when it is not usable.

    ``window`` (a CT/MR intensity window: a name, "lo,hi" or (lo, hi)) applies to volume SPECs; 2D images
    ignore it.
    """
    if isinstance(window, str):
        window = parse_window(window)
    spec_s = str(spec)
    if spec_s.startswith("builtin:"):
        return open_builtin(spec_s.split(":", 1)[1], window)
    # The volume readers load nibabel, pynrrd and pydicom: imported only when a SPEC needs them.
    if "::" in spec_s:
        from medsamkit.io.volume_data import volume_pair_dataset

        img, lab = spec_s.split("::", 1)
        return volume_pair_dataset([(Path(img), Path(lab))], kind or "class", window)
    path = Path(spec_s)
    if not path.exists():
        raise InputError(f"{path}: data not found (expected a folder, a volume file or builtin:NAME)")
    if path.is_dir() and (path / "images").is_dir() and (path / "labels").is_dir():
        return image_folder_dataset(path, kind or "instance")
    if path.is_dir() and (path / "imagesTr").is_dir() and (path / "labelsTr").is_dir():
        from medsamkit.io.nnunet import nnunet_dataset

        return nnunet_dataset(path, kind or "class", window)
    if path.is_dir():
        from medsamkit.io.volume_data import dicom_folder_dataset

        return dicom_folder_dataset(path, kind or "class", window)
    if is_volume_file(path):
        raise InputError(f"{path}: a single volume needs its label: use --data IMAGE::LABEL")
    raise InputError(f"{path}: not a data SPEC (images/+labels/ folder, imagesTr/+labelsTr/, DICOM folder, "
                     "IMAGE::LABEL volumes, or builtin:NAME)")
