"""A volume in an annotation session: its views (``annotate.session.geometry``), geometry, display windows and
annotation files.

The model input is the SPEC's windowed [0, 1] volume (``--window`` picks another window); the page's display
window (CT presets, level/width, MR percentiles) never changes what the model sees, so the embeddings stay
valid while the person adjusts contrast. A volume's objects are a ``VolumeAnnotation``, saved as NIfTI on the
input's grid (+ a DICOM SEG for DICOM input) by ``io.annotations``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from medsamkit.annotate.session.cache import DecodedCache
from medsamkit.annotate.session.geometry import AXES, aspect, check_axis, view_stack
from medsamkit.annotate.session.state import ImageAnnotation, VolumeAnnotation
from medsamkit.annotate.session.views import ViewRule, whole_window
from medsamkit.core.errors import InputError
from medsamkit.core.objects import Window
from medsamkit.io.annotations import AnnotationFolder
from medsamkit.io.cases import VolumeCase
from medsamkit.io.dicom.seg_write import is_dicom_grid
from medsamkit.io.volume import Volume
from medsamkit.io.windowing import WINDOWS, apply_window, percentile_clip
from medsamkit.prompts.simulate import Prompt
from medsamkit.volumes.slices import slice_input

CT_PRESETS = ("lung", "soft_tissue", "bone", "brain")
MR_PERCENTILES = {"auto": (0.5, 99.5), "full": (0.0, 100.0), "high": (2.0, 98.0)}


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
class VolumeItem:
    """One volume of the session (the ``Item`` protocol of ``annotate.session.items``); read on first use."""

    id: str
    name: str
    load_case: Callable[[], VolumeCase]
    memory: DecodedCache
    three_slice: bool = False
    kind = "volume"  # how the API lists it
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
        """The volume as the session lists it (geometry once it has been opened)."""
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

    @property
    def grid(self) -> Volume:
        """The input's grid (affine, spacing, DICOM meta) the saved labels are written on."""
        return self.loaded().grid

    def as_volume(self, what: str) -> VolumeItem:
        """This volume (what only volumes do asks for it)."""
        return self

    # --- its annotation ----------------------------------------------------------------------------
    def new_annotation(self, default_class: str | None) -> ImageAnnotation:
        """The objects of the label volume that came with the SPEC (RTSTRUCT / SEG / label file), else none."""
        return VolumeAnnotation.start(self.loaded().label, self.shape, default_class, f"{self.name} labels")

    def read_annotation(self, files: AnnotationFolder) -> ImageAnnotation | None:
        """The saved objects (None when nothing was saved yet)."""
        return VolumeAnnotation.restore(files.read_volume(self.id, self.shape),
                                        str(files.volume_paths(self.id)["label"]))

    def write_annotation(self, files: AnnotationFolder, state: VolumeAnnotation, classes: list[str],
                         source: str) -> None:
        """NIfTI label map (+ class map) on the input grid, DICOM SEG for DICOM input, JSON log."""
        identity = next((r for r in state.records.values() if r.get("model")), {})
        class_map = state.class_map(classes) if classes else None
        grid = self.grid
        parts = state.segments(classes, self.loaded().classes) if is_dicom_grid(grid) else None
        files.write_volume(self.id, self.name, state.label, state.objects(), classes, class_map, grid, parts,
                           f"medsamkit annotate ({identity.get('model', 'model')})")

    def labels_image(self, state: ImageAnnotation) -> np.ndarray:
        """A volume has no single label image: its views have (``view_labels``)."""
        raise InputError("a volume has no single PNG: ask /api/volume/ID/labels?axis=&slice= for one view")

    def view_labels(self, state: ImageAnnotation, axis: int, k: int | None) -> np.ndarray:
        """Object ids on one view."""
        axis, k = self.check_view(axis, k)
        return view_stack(state.label, axis)[k]

    # --- prompts on its views ----------------------------------------------------------------------
    def model_view(self, prompt: Prompt, shape: Sequence[int], rule: ViewRule, input_size: int) -> Window:
        """Volumes are answered on whole views (propagation steps from view to view)."""
        return whole_window(shape)

    def note_commit(self, mask: np.ndarray, rule: ViewRule) -> None:
        """The view rule of 2D images does not learn from volume objects."""
