"""The images and volumes an annotation session works on, addressed by id only, behind one ``Item`` protocol:
``ImageItem`` (2D) here, ``VolumeItem`` in ``annotate.session.volumes``. Where a 2D image and a volume differ
(their views, their objects, their files, how a prompt picks its model view) the item answers; nothing above
asks which one it has.

``ItemSource`` opens any SPEC through ``io.spec.resolve_spec``: a folder of 2D images (optional labels/ to
correct), images/ + labels/, builtin:NAME, NIfTI/NRRD files, IMAGE::LABEL, DICOM series folders, nnU-Net
folders. A view of an item is (id, axis, slice): 2D images have one view (axis 0, slice None); volumes one per
slice along each of the three axes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from medsamkit.annotate.session.cache import DecodedCache
from medsamkit.annotate.session.state import ImageAnnotation
from medsamkit.annotate.session.views import ViewRule
from medsamkit.annotate.session.volumes import VolumeItem
from medsamkit.core.errors import InputError
from medsamkit.core.objects import Window
from medsamkit.io.annotations import AnnotationFolder
from medsamkit.io.spec import SpecItem, resolve_spec
from medsamkit.prompts.simulate import Prompt

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
CONTRASTS = {"auto": (0.5, 99.5), "minmax": (0.0, 100.0), "high": (2.0, 98.0), "soft": (0.0, 99.9)}


class Item(Protocol):
    """What the session asks of an image or a volume."""

    id: str
    name: str

    def describe(self) -> dict:
        """id, name, kind ("image" | "volume"), shape (and a volume's geometry once read)."""

    def view(self, axis: int, k: int | None) -> np.ndarray:
        """The model input of one view (InputError for a view the item does not have)."""

    def as_volume(self, what: str) -> VolumeItem:
        """The item as a volume; InputError saying ``what`` needs one for a 2D image."""

    def new_annotation(self, default_class: str | None) -> ImageAnnotation:
        """Its objects before any save: the SPEC's labels as editable objects, else none."""

    def read_annotation(self, files: AnnotationFolder) -> ImageAnnotation | None:
        """Its saved objects (None when nothing was saved yet)."""

    def write_annotation(self, files: AnnotationFolder, state: ImageAnnotation, classes: list[str],
                         source: str) -> None:
        """Save its objects; ``source``: the SPEC, so training can find the pixels again."""

    def labels_image(self, state: ImageAnnotation) -> np.ndarray:
        """The instance label map the page draws (InputError for a volume: one view at a time)."""

    def model_view(self, prompt: Prompt, shape: Sequence[int], rule: ViewRule, input_size: int) -> Window:
        """The window a new object's prompt is answered on."""

    def note_commit(self, mask: np.ndarray, rule: ViewRule) -> None:
        """Tell the view rule about a committed object."""


def safe_id(name: str, taken: set[str]) -> str:
    """A file-system-safe, unique id for an image name (no separators, no leading dots)."""
    base = _UNSAFE.sub("_", name).strip("._") or "image"
    ident, n = base, 1
    while ident in taken:
        n += 1
        ident = f"{base}-{n}"
    taken.add(ident)
    return ident


def display_pixels(pixels: np.ndarray, contrast: str = "auto") -> np.ndarray:
    """An 8-bit copy of a view for the page, scaled between the preset's percentiles."""
    if contrast not in CONTRASTS:
        raise InputError(f"unknown contrast {contrast!r}; choose one of: {', '.join(CONTRASTS)}")
    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3]
    lo_q, hi_q = CONTRASTS[contrast]
    lo, hi = np.percentile(img, [lo_q, hi_q])
    out = np.clip((img - lo) / max(float(hi - lo), 1e-8), 0, 1) * 255
    return out.round().astype(np.uint8)


@dataclass
class ImageItem:
    """One 2D image of the session: its id (also its file stem under --out), name, size and pixels."""

    id: str
    name: str
    shape: tuple[int, int]
    source: SpecItem
    pixels: DecodedCache
    kind = "image"  # how the API lists it

    def describe(self) -> dict:
        """The image as the session lists it."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "shape": list(self.shape)}

    def view(self, axis: int, k: int | None) -> np.ndarray:
        """The pixels (the one view: axis 0, slice None)."""
        if k is not None:
            raise InputError(f"image {self.id!r} is 2D: slice must be null, got {k}")
        if axis != 0:
            raise InputError(f"image {self.id!r} is 2D: axis must be 0, got {axis}")
        return self.pixels.get(self.id, self._read)

    def _read(self) -> np.ndarray:
        pixels = self.source.load().image
        if tuple(pixels.shape[:2]) != tuple(self.shape[:2]):
            raise InputError(f"{self.name}: image changed size since the session started")
        return pixels

    def as_volume(self, what: str) -> VolumeItem:
        """Never: a 2D image is no volume."""
        raise InputError(f"image {self.id!r} is 2D: {what}")

    def new_annotation(self, default_class: str | None) -> ImageAnnotation:
        """The objects of the label map shipped with the image (labels/ or the SPEC's), else none."""
        return ImageAnnotation.start(self.source.load().label, self.shape, default_class, f"{self.name} labels")

    def read_annotation(self, files: AnnotationFolder) -> ImageAnnotation | None:
        """The saved objects (None when nothing was saved yet)."""
        return ImageAnnotation.restore(files.read_image(self.id, self.shape), str(files.image_paths(self.id)["label"]))

    def write_annotation(self, files: AnnotationFolder, state: ImageAnnotation, classes: list[str],
                         source: str) -> None:
        """Instance PNG, class PNG (with classes) and JSON."""
        class_map = state.class_map(classes) if classes else None
        files.write_image(self.id, self.name, state.label, state.objects(), classes, class_map, source)

    def labels_image(self, state: ImageAnnotation) -> np.ndarray:
        """The whole instance map."""
        return state.label

    def model_view(self, prompt: Prompt, shape: Sequence[int], rule: ViewRule, input_size: int) -> Window:
        """The view rule's window (``annotate.session.views``)."""
        return rule.window(prompt, shape, input_size)

    def note_commit(self, mask: np.ndarray, rule: ViewRule) -> None:
        """Click-only views follow the sizes of committed 2D objects."""
        rule.remember(mask)


class ItemSource:
    """The session's items by id, with the few decoded images and volumes kept in memory; images a client
    uploaded join them (``add_uploaded``), each remembering the folder it is read from again (``origin``)."""

    def __init__(self, spec: str | Path, window: str | None = None, three_slice: bool = False,
                 keep_images: int = 4, keep_volumes: int = 2) -> None:
        self.spec = resolve_spec(spec)
        self.window, self.three_slice = window, three_slice
        self.memory = DecodedCache(keep_volumes if self.spec.volumes else keep_images)
        self.items: dict[str, Item] = {}
        self.origins: dict[str, str] = {}  # item id -> the SPEC it is read from, where not the session's
        taken: set[str] = set()
        for found in self.spec.items(window):
            item = self._item(found, safe_id(found.key, taken))
            self.items[item.id] = item

    def _item(self, found: SpecItem, ident: str) -> Item:
        if self.spec.volumes:
            return VolumeItem(ident, found.name, found.load, self.memory, self.three_slice)
        return ImageItem(ident, found.name, tuple(found.shape()), found, self.memory)

    def add_uploaded(self, path: Path, ident: str) -> Item:
        """The uploaded file ``path`` (in the uploads folder) as item ``ident``; InputError when it is not the
        session's kind (2D images or volumes) or not readable."""
        folder = resolve_spec(path.parent)
        names = (path.name, path.name.split(".")[0])  # a plain image is named by its file, a volume by its stem
        found = next((i for i in folder.items(self.window) if i.name in names), None)
        if found is None or folder.volumes != self.spec.volumes:
            want = "a volume (NIfTI / NRRD)" if self.spec.volumes else "a 2D image (PNG, JPEG, TIFF)"
            raise InputError(f"{path.name}: this session annotates {want}; the upload is not one")
        item = self._item(found, ident)
        self.items[ident] = item
        self.origins[ident] = str(path.parent)
        return item

    @property
    def ids(self) -> list[str]:
        """Item ids in list order."""
        return list(self.items)

    def item(self, item_id: str) -> Item:
        """The item of ``item_id``; KeyError (a 404 for the server) when there is none."""
        if not isinstance(item_id, str) or item_id not in self.items:
            raise KeyError(item_id)
        return self.items[item_id]
