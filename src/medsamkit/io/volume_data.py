"""Volume data SPECs as datasets: IMAGE::LABEL volume pairs and DICOM series folders with RTSTRUCT / SEG labels,
and single volumes without a label (what the annotator opens to annotate from scratch).

Intensities are mapped to [0,1] for prompting by `to_unit_range`: CT (DICOM modality CT, or a minimum below
-500 HU) with the `soft_tissue` window unless a window is named, anything else with 0.5-99.5 percentile
clipping. nnU-Net folders (`medsamkit.io.nnunet`) use the same mapping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.io.cases import Dataset, VolumeCase
from medsamkit.io.volume import Volume
from medsamkit.io.volume_reader import read_label_volume, read_volume
from medsamkit.io.windowing import WindowChoice, percentile_clip, range_window, window_by_name


def to_unit_range(vol: Volume, window: WindowChoice = None) -> np.ndarray:
    """Map a volume's intensities to float32 [0,1]: a named or (lo, hi) window, else CT / percentile rule."""
    arr = vol.array.astype(np.float32)
    if isinstance(window, tuple):
        return range_window(arr, *window)
    if isinstance(window, str):
        return window_by_name(arr, window)
    is_ct = vol.meta.get("Modality") == "CT" or float(arr.min()) < -500
    return window_by_name(arr, "soft_tissue") if is_ct else percentile_clip(arr)


def load_volume_pair(image: Path, label: Path, kind: str = "class", window: WindowChoice = None) -> VolumeCase:
    """Read an image volume and its label volume (same grid, else InputError naming both)."""
    vol = read_volume(image)
    lab = read_label_volume(label, vol)
    return VolumeCase(volume_name(image), to_unit_range(vol, window), lab.array, tuple(vol.spacing), kind,
                      {"volume": vol, "label_path": str(label)})


def volume_pair_dataset(pairs: list[tuple[Path, Path]], kind: str = "class", window: WindowChoice = None) -> Dataset:
    """A dataset over explicit (image, label) volume pairs."""
    for img, lab in pairs:
        for p in (img, lab):
            if not p.exists():
                raise InputError(f"{p}: file not found")
    return Dataset("volumes", [lambda i=i, lb=lb: load_volume_pair(i, lb, kind, window) for i, lb in pairs],
                   f"{len(pairs)} volume pairs", kind, [volume_name(i) for i, _ in pairs])


def volume_name(path: Path) -> str:
    """A volume's case name: its file (or folder) name without the format suffixes."""
    return path.name.split(".")[0]


def unlabelled_volume(path: Path, window: WindowChoice = None) -> VolumeCase:
    """A volume file or DICOM series folder on its own: no label (``label`` None)."""
    vol = read_volume(path)
    return VolumeCase(volume_name(path), to_unit_range(vol, window), None, tuple(vol.spacing), "class",
                      {"volume": vol})


def read_dicom_case(folder: Path, kind: str = "class", window: WindowChoice = None,
                    labels_required: bool = True) -> VolumeCase:
    """A DICOM series folder with the masks of its RTSTRUCT / SEG files as the label; without such files an
    InputError, or (``labels_required`` False) the series alone with label None."""
    import pydicom

    from medsamkit.io.dicom.rtstruct import read_rtstruct
    from medsamkit.io.dicom.seg import read_dicom_seg
    from medsamkit.io.dicom.series import read_dicom_series

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
    if not names and labels_required:
        raise InputError(f"{folder}: DICOM series has no RTSTRUCT or SEG file with labels")
    if not names:
        return VolumeCase(folder.name, to_unit_range(vol, window), None, tuple(vol.spacing), kind, {"volume": vol})
    return VolumeCase(folder.name, to_unit_range(vol, window), label, tuple(vol.spacing), kind,
                      {"volume": vol, "classes": {i + 1: n for i, n in enumerate(names)}})


def dicom_folder_dataset(folder: Path, kind: str = "class", window: WindowChoice = None) -> Dataset:
    """A one-volume dataset for a DICOM series folder whose RTSTRUCT / SEG files give the labels."""
    return Dataset(folder.name, [lambda: read_dicom_case(folder, kind, window)], f"DICOM series {folder}", kind,
                   [folder.name])
