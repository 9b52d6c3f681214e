"""Volume data SPECs as datasets: an IMAGE::LABEL pair, an nnU-Net folder (imagesTr/labelsTr), a DICOM folder.

Intensities are mapped to [0,1] for prompting: CT (DICOM modality CT, or a minimum below -500 HU) with the
`soft_tissue` window unless a window is named, anything else with 0.5-99.5 percentile clipping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.io.datasets import Dataset, VolumeCase
from medsamkit.io.volume import Volume, read_label_volume, read_volume
from medsamkit.io.windowing import percentile_clip, range_window, window_by_name

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr")


def _is_volume_file(path: Path) -> bool:
    return any(path.name.lower().endswith(s) for s in VOLUME_SUFFIXES)


def to_unit_range(vol: Volume, window: str | tuple[float, float] | None = None) -> np.ndarray:
    """Map a volume's intensities to float32 [0,1]: a named or (lo, hi) window, else CT / percentile rule."""
    arr = vol.array.astype(np.float32)
    if isinstance(window, tuple):
        return range_window(arr, *window)
    if isinstance(window, str):
        return window_by_name(arr, window)
    is_ct = vol.meta.get("Modality") == "CT" or float(arr.min()) < -500
    return window_by_name(arr, "soft_tissue") if is_ct else percentile_clip(arr)


def _integer_labels(label: Volume) -> np.ndarray:
    arr = label.array
    if not np.issubdtype(arr.dtype, np.integer):
        if np.isnan(arr).any() or np.any(arr != np.round(arr)):
            raise InputError(f"{label.source}: label volume must hold integer labels")
        arr = arr.astype(np.int32)
    return arr


def load_volume_pair(image: Path, label: Path, kind: str = "class", window=None) -> VolumeCase:
    """Read an image volume and its label volume (same grid, else InputError naming both)."""
    vol = read_volume(image)
    lab = read_label_volume(label, vol)
    name = image.name.split(".")[0]
    return VolumeCase(name, to_unit_range(vol, window), _integer_labels(lab), tuple(vol.spacing), kind,
                      {"volume": vol, "label_path": str(label)})


def volume_pair_dataset(pairs: list[tuple[Path, Path]], kind: str = "class", window=None) -> Dataset:
    """A dataset over explicit (image, label) volume pairs."""
    for img, lab in pairs:
        for p in (img, lab):
            if not p.exists():
                raise InputError(f"{p}: file not found")
    return Dataset("volumes", [lambda i=i, lb=lb: load_volume_pair(i, lb, kind, window) for i, lb in pairs],
                   f"{len(pairs)} volume pairs", kind)


def _nnunet_pairs(root: Path) -> list[tuple[Path, Path]]:
    images = sorted(p for p in (root / "imagesTr").iterdir() if _is_volume_file(p))
    pairs = []
    for img in images:
        stem = img.name.split(".")[0]
        case = stem[:-5] if stem[-5:-4] == "_" and stem[-4:].isdigit() else stem  # nnU-Net: CASE_0000
        ext = img.name[len(stem):]
        lab = root / "labelsTr" / f"{case}{ext}"
        if not lab.exists():
            raise InputError(f"{img}: no label {lab.name} in labelsTr/")
        pairs.append((img, lab))
    if not pairs:
        raise InputError(f"{root}: imagesTr/ holds no NIfTI/NRRD volumes")
    return pairs


def _dicom_case(folder: Path, kind: str, window) -> VolumeCase:
    import pydicom

    from medsamkit.io.dicom import read_dicom_seg, read_dicom_series, read_rtstruct

    vol = read_dicom_series(folder)
    label = np.zeros(vol.array.shape, dtype=np.uint8)
    names: list[str] = []
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        try:
            modality = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality")
        except Exception:
            continue
        if modality == "RTSTRUCT":
            rois = read_rtstruct(f, vol)
        elif modality == "SEG":
            rois = read_dicom_seg(f, vol)
        else:
            continue
        for name, mask in rois.items():
            names.append(name)
            label[mask & (label == 0)] = len(names)
    if not names:
        raise InputError(f"{folder}: DICOM series has no RTSTRUCT or SEG file with labels")
    return VolumeCase(folder.name, to_unit_range(vol, window), label, tuple(vol.spacing), kind,
                      {"volume": vol, "classes": {i + 1: n for i, n in enumerate(names)}})


def open_volume_spec(path: Path, kind: str = "class", window=None) -> Dataset:
    """Dataset for a volume SPEC path (nnU-Net folder, DICOM folder); single files need IMAGE::LABEL."""
    if path.is_dir() and (path / "imagesTr").is_dir() and (path / "labelsTr").is_dir():
        return volume_pair_dataset(_nnunet_pairs(path), kind, window)
    if path.is_dir():
        return Dataset(path.name, [lambda: _dicom_case(path, kind, window)], f"DICOM series {path}", kind)
    if _is_volume_file(path):
        raise InputError(f"{path}: a single volume needs its label: use --data IMAGE::LABEL")
    raise InputError(f"{path}: not a data SPEC (images/+labels/ folder, imagesTr/+labelsTr/, DICOM folder, "
                     "IMAGE::LABEL volumes, or builtin:NAME)")
