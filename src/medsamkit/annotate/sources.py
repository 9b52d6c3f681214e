"""The images an annotation session works on, addressed by id only: a folder of 2D images (with an
optional labels/ folder to correct) or any 2D data SPEC that ``open_dataset`` reads.

A view of an image is (image id, axis, slice): 2D images have one view, slice None; volumes
(``annotate.volume_source``: NIfTI, NRRD, DICOM series, IMAGE::LABEL pairs, nnU-Net folders,
builtin:lung-gtv) have one view per slice along each of the three axes.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsamkit.annotate.volume_source import VolumeEntry, VolumeMemory, volume_loaders
from medsamkit.core.errors import InputError
from medsamkit.io.spec import SpecItem, resolve_spec

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ImageEntry:
    """One image of the session: its id (also its file stem under --out), display name and loaders."""

    id: str
    name: str
    shape: tuple[int, ...]
    load_image: Callable[[], np.ndarray]
    load_label: Callable[[], np.ndarray | None]
    kind: str = "image"  # 2D; volumes are `volume_source.VolumeEntry` (kind "volume")

    def describe(self) -> dict:
        """The entry as the API lists it."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "shape": list(self.shape)}


def safe_id(name: str, taken: set[str]) -> str:
    """A file-system-safe, unique id for an image name (no separators, no leading dots)."""
    base = _UNSAFE.sub("_", name).strip("._") or "image"
    ident, n = base, 1
    while ident in taken:
        n += 1
        ident = f"{base}-{n}"
    taken.add(ident)
    return ident


def _entries(items: list[SpecItem]) -> list[ImageEntry]:
    """The session's 2D entries of a SPEC's items (ids: their names made file-safe)."""
    taken: set[str] = set()
    return [ImageEntry(safe_id(item.key, taken), item.name, tuple(item.shape()), lambda i=item: i.load().image,
                       lambda i=item: i.load().label) for item in items]


class ImageSource:
    """The session's images by id, with a small cache of decoded pixels (the current and next images)."""

    def __init__(self, spec: str | Path, keep: int = 4, window: str | None = None,
                 three_slice: bool = False) -> None:
        self.spec = str(spec)
        resolved = resolve_spec(self.spec)
        entries = self._volume_entries(window, three_slice) if resolved.volumes else _entries(resolved.items())
        self.entries: dict[str, ImageEntry | VolumeEntry] = {e.id: e for e in entries}
        self._pixels: OrderedDict[str, np.ndarray] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()  # requests arrive on several server threads

    def _volume_entries(self, window: str | None, three_slice: bool) -> list[VolumeEntry]:
        from medsamkit.io.windowing import parse_window

        memory, taken = VolumeMemory(), set()
        return [VolumeEntry(safe_id(name, taken), name, load, three_slice, memory=memory)
                for name, load in volume_loaders(self.spec, parse_window(window))]

    @property
    def ids(self) -> list[str]:
        """Image ids in list order."""
        return list(self.entries)

    def entry(self, image_id: str) -> ImageEntry:
        """The entry of ``image_id``; KeyError (a 404 for the server) when there is none."""
        if not isinstance(image_id, str) or image_id not in self.entries:
            raise KeyError(image_id)
        return self.entries[image_id]

    def view(self, image_id: str, axis: int = 0, slice_index: int | None = None) -> np.ndarray:
        """The 2D pixels of one view; InputError for an axis/slice a 2D image does not have."""
        entry = self.entry(image_id)
        if entry.kind == "volume":
            return entry.view(axis, slice_index)
        if entry.kind == "image" and slice_index is not None:
            raise InputError(f"image {image_id!r} is 2D: slice must be null, got {slice_index}")
        if entry.kind == "image" and axis != 0:
            raise InputError(f"image {image_id!r} is 2D: axis must be 0, got {axis}")
        with self._lock:
            pixels = self._pixels.get(image_id)
            if pixels is None:
                pixels = entry.load_image()
                if tuple(pixels.shape[:2]) != tuple(entry.shape[:2]):
                    raise InputError(f"{entry.name}: image changed size since the session started")
                self._pixels[image_id] = pixels
                while len(self._pixels) > self._keep:
                    self._pixels.popitem(last=False)
            else:
                self._pixels.move_to_end(image_id)
            return pixels

    def label(self, image_id: str) -> np.ndarray | None:
        """The label map shipped with the image (labels/ or the SPEC's), or None."""
        return self.entry(image_id).load_label()
