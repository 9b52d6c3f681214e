"""Annotation files under --out, through the one reader/writer of the folder format (``io.annotations``): per
image ``ID.png`` + ``ID.classes.png`` + ``ID.json``, per volume NIfTI + DICOM SEG + JSON (``annotate.volume_export``);
``session.json`` records the image the person was on. Nothing is ever written outside the --out folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsamkit.annotate.state import ImageAnnotation
from medsamkit.core.errors import InputError
from medsamkit.io.annotations import AnnotationFolder
from medsamkit.io.images import png_bytes as _png


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of a 2D uint8/uint16 array or an (H, W, 3|4) uint8 array."""
    if array.ndim == 3 and array.shape[-1] not in (3, 4):
        raise InputError("a volume has no single PNG: ask /api/volume/ID/labels?axis=&slice= for one view")
    return _png(array)


class AnnotationStore:
    """The --out folder of a session; ids are the source's safe ids, so every path stays inside it."""

    def __init__(self, out: str | Path) -> None:
        self.files = AnnotationFolder(out)
        self.out = self.files.out
        self._source = None  # the ImageSource, for the grids volumes are written on

    def attach(self, source) -> None:
        """Let the store find each volume's grid (its labels are written on it)."""
        self._source = source

    def label_path(self, image_id: str) -> Path:
        """The instance PNG of an image."""
        return self.files.image_paths(image_id)["label"]

    @property
    def embedding_folder(self) -> Path:
        """Where the embedding cache lives."""
        return self.files.embedding_folder

    def save(self, image_id: str, name: str, state: ImageAnnotation, classes: list[str],
             source: str | None = None) -> None:
        """Write the image's files; ``source``: the folder or SPEC the image comes from (what training reads
        it back from)."""
        if state.label.ndim == 3:
            from medsamkit.annotate.volume_export import save_volume

            entry = self._source.entry(image_id)
            save_volume(self.files, image_id, name, state, classes, entry.grid, entry.loaded().classes)
            return
        class_map = state.class_map(classes) if classes else None
        self.files.write_image(image_id, name, state.label, state.objects(), classes, class_map, source)

    def load(self, image_id: str, shape: tuple[int, int]) -> ImageAnnotation | None:
        """The saved annotation of an image, or None when it has none yet."""
        if len(shape) == 3:
            saved, path = self.files.read_volume(image_id, tuple(shape)), self.files.volume_paths(image_id)["label"]
        else:
            saved, path = self.files.read_image(image_id, tuple(shape)), self.label_path(image_id)
        return None if saved is None else ImageAnnotation.restore(saved.label, saved.records, str(path))

    def save_session(self, current: str | None) -> None:
        """Remember the image the person is on."""
        self.files.save_session(current)

    def load_session(self) -> dict:
        """What ``save_session`` wrote (empty when nothing yet)."""
        return self.files.load_session()
