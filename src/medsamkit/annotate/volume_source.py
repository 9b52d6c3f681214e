"""Volumes in an annotation session: which SPECs are volumes, their views (axis + slice), geometry and
display windows.

A volume SPEC is anything ``open_dataset`` reads as volumes (NIfTI/NRRD ``IMAGE::LABEL`` pairs, DICOM series
folders with RTSTRUCT / SEG, nnU-Net folders, ``builtin:lung-gtv``), a single NIfTI/NRRD file, or a folder
of them. The model input is the dataset's windowed [0, 1] volume (``--window`` picks another window); the
page's display window (CT presets, level/width, MR percentiles) never changes what the model sees, so the
embeddings stay valid while the person adjusts contrast.

Views: axis 0 = axial ``array[k]``, axis 1 = coronal ``array[::-1, k, :]``, axis 2 = sagittal
``array[::-1, :, k]`` (z reversed so the top of the volume is at the top of the picture). View pixels are
the unit of every 2D interaction; ``aspect`` (row spacing / column spacing) tells the page how to scale.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.io.cases import VolumeCase
from medsamkit.io.spec import resolve_spec
from medsamkit.io.volume import Volume
from medsamkit.io.windowing import WINDOWS, apply_window, percentile_clip
from medsamkit.volumes.slices import slice_input

AXES = ("axial", "coronal", "sagittal")
CT_PRESETS = ("lung", "soft_tissue", "bone", "brain")
MR_PERCENTILES = {"auto": (0.5, 99.5), "full": (0.0, 100.0), "high": (2.0, 98.0)}


def check_axis(axis: int, source: str) -> int:
    """``axis`` as an int in 0..2, else InputError (a 400)."""
    if axis not in (0, 1, 2):
        raise InputError(f"{source}: axis must be 0 (axial), 1 (coronal) or 2 (sagittal), got {axis}")
    return int(axis)


def view_stack(array: np.ndarray, axis: int) -> np.ndarray:
    """(N, h, w) numpy view of a (Z, Y, X) array whose ``[k]`` is the view (axis, k) (no copy)."""
    if axis == 0:
        return array
    flipped = array[::-1]
    return flipped.transpose(1, 0, 2) if axis == 1 else flipped.transpose(2, 0, 1)


def view_voxels(shape: tuple[int, int, int], axis: int, k: int, rows: np.ndarray,
                cols: np.ndarray) -> np.ndarray:
    """Flat (C-order) voxel indices of view pixels (rows, cols) of the view (axis, k)."""
    z_count = shape[0]
    if axis == 0:
        zyx = (np.full_like(rows, k), rows, cols)
    elif axis == 1:
        zyx = (z_count - 1 - rows, np.full_like(rows, k), cols)
    else:
        zyx = (z_count - 1 - rows, cols, np.full_like(rows, k))
    return np.ravel_multi_index(zyx, shape)


def aspect(spacing: tuple[float, float, float], axis: int) -> float:
    """Row spacing / column spacing of a view: how much taller than wide a view pixel is."""
    sz, sy, sx = spacing
    return float({0: sy / sx, 1: sz / sx, 2: sz / sy}[axis])


@dataclass
class LoadedVolume:
    """A volume in memory: model input (Z, Y, X) in [0, 1], raw intensities and grid, label, class names."""

    image01: np.ndarray
    grid: Volume
    label: np.ndarray | None
    classes: dict[int, str]
    is_ct: bool


def _loaded(case: VolumeCase) -> LoadedVolume:
    grid = case.meta.get("volume")
    if grid is None:  # a reader without its raw grid: the unit-range image on a unit grid
        grid = Volume(case.image, tuple(case.spacing), np.diag([case.spacing[2], case.spacing[1],
                                                                case.spacing[0], 1.0]), case.name)
    is_ct = grid.meta.get("Modality") == "CT" or float(np.min(grid.array)) < -500
    label = None if case.label is None or not np.asarray(case.label).any() else np.asarray(case.label)
    names = dict(case.meta.get("classes") or ({1: case.meta["roi"]} if "roi" in case.meta else {}))  # lung-gtv: roi
    return LoadedVolume(np.ascontiguousarray(case.image, dtype=np.float32), grid, label, names, is_ct)


@dataclass
class VolumeEntry:
    """One volume of the session (same interface as ``ImageEntry``, kind "volume"); pixels load on demand."""

    id: str
    name: str
    load_case: Callable[[], VolumeCase]
    three_slice: bool = False
    kind: str = "volume"
    memory: VolumeMemory | None = None
    _geometry: dict | None = field(default=None, repr=False)

    def loaded(self) -> LoadedVolume:
        """The volume in memory (read on first use; the least recently used ones are dropped)."""
        vol = self.memory.get(self.id, lambda: _loaded(self.load_case()))
        if self._geometry is None:
            self._geometry = self._describe_grid(vol)
        return vol

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) of the volume."""
        return tuple(int(n) for n in self.loaded().image01.shape)

    def _describe_grid(self, vol: LoadedVolume) -> dict:
        z, y, x = vol.image01.shape
        spacing = tuple(float(s) for s in vol.grid.spacing)
        windows = ({"kind": "ct", "presets": {n: list(WINDOWS[n]) for n in CT_PRESETS}, "default": None}
                   if vol.is_ct else {"kind": "mr", "percentiles": {k: list(v) for k, v in MR_PERCENTILES.items()},
                                      "default": "auto"})
        return {"shape": [z, y, x], "spacing": list(spacing), "affine": np.asarray(vol.grid.affine).tolist(),
                "axes": [{"name": AXES[a], "slices": [z, y, x][a], "view_shape": list(view_stack(
                    vol.image01, a).shape[1:]), "aspect": round(aspect(spacing, a), 6)} for a in range(3)],
                "windows": windows, "three_slice": self.three_slice, "classes": vol.classes,
                "dicom": "SOPInstanceUIDs" in vol.grid.meta}

    @property
    def geometry(self) -> dict:
        """Shape, spacing (z, y, x mm), RAS affine, per-axis slice count and aspect, display windows."""
        if self._geometry is None:
            self.loaded()
        return self._geometry

    def describe(self) -> dict:
        """The entry as /api/info lists it (geometry once the volume has been opened)."""
        out = {"id": self.id, "name": self.name, "kind": self.kind}
        if self._geometry is not None:
            out.update(shape=self._geometry["shape"], geometry=self._geometry)
        return out

    def check_view(self, axis: int, k: int | None) -> tuple[int, int]:
        """(axis, slice) checked against the volume (InputError: a 400 with one line)."""
        axis = check_axis(axis, self.name)
        if k is None:
            raise InputError(f"volume {self.id!r}: give a slice (0..{self.shape[axis] - 1} on axis {axis})")
        n = self.shape[axis]
        if not isinstance(k, int) or not 0 <= k < n:
            raise InputError(f"volume {self.id!r}: slice {k} is outside 0..{n - 1} on axis {axis} ({AXES[axis]})")
        return axis, k

    def stack(self, axis: int) -> np.ndarray:
        """The model input as a stack of views along ``axis`` (what propagation walks through)."""
        return view_stack(self.loaded().image01, check_axis(axis, self.name))

    def view(self, axis: int, k: int | None) -> np.ndarray:
        """The model input of one view: the slice, or slices k-1, k, k+1 as channels with 3-slice input."""
        axis, k = self.check_view(axis, k)
        return np.ascontiguousarray(slice_input(self.stack(axis), k, self.three_slice))

    def display(self, axis: int, k: int | None, window: str | None = None, level: float | None = None,
                width: float | None = None) -> np.ndarray:
        """8-bit view for the page with a CT preset, a level/width, or an MR percentile window."""
        axis, k = self.check_view(axis, k)
        vol = self.loaded()
        raw = view_stack(vol.grid.array, axis)[k].astype(np.float32)
        if level is not None or width is not None:
            if level is None or width is None:
                raise InputError("give both level and width")
            out = apply_window(raw, float(level), float(width))
        elif window in WINDOWS:
            out = apply_window(raw, *WINDOWS[window])
        elif window in MR_PERCENTILES:
            out = percentile_clip(raw, *MR_PERCENTILES[window])
        elif window in (None, "", "model"):
            out = view_stack(vol.image01, axis)[k]
        else:
            raise InputError(f"unknown window {window!r}; choose one of: model, "
                             f"{', '.join(list(WINDOWS) + list(MR_PERCENTILES))}, or level+width")
        return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)

    def load_label(self) -> np.ndarray | None:
        """The label volume that came with the SPEC (RTSTRUCT / SEG / label file), or None."""
        return self.loaded().label

    @property
    def grid(self) -> Volume:
        """The input's grid (affine, spacing, DICOM meta) the saved labels are written on."""
        return self.loaded().grid


class VolumeMemory:
    """The few volumes kept decoded (a CT is ~100-400 MB as float32): least recently used dropped first."""

    def __init__(self, keep: int = 2) -> None:
        self._items: OrderedDict[str, LoadedVolume] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], LoadedVolume]) -> LoadedVolume:
        """The kept volume, or ``load()`` it (under the lock: two requests never read one volume twice)."""
        with self._lock:
            if key not in self._items:
                self._items[key] = load()
                while len(self._items) > self._keep:
                    self._items.popitem(last=False)
            self._items.move_to_end(key)
            return self._items[key]


def volume_loaders(spec: str, window=None) -> list[tuple[str, Callable[[], VolumeCase]]]:
    """(name, loader) of every volume of a volume SPEC; files without a label open with no objects."""
    return [(item.name, item.load) for item in resolve_spec(spec).items(window)]
