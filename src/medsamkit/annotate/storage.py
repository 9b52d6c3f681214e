"""Annotation files under --out, all written atomically: per image ``ID.png`` (uint16 instance ids),
``ID.classes.png`` (class index map, 1 = first --classes name, when classes are used) and ``ID.json`` (per
object: class, prompts, model + checkpoint sha256, seconds, clicks); ``session.json`` records the image
the person was on. Volumes are saved by ``annotate.volume_export`` (NIfTI on the input grid, DICOM SEG,
JSON log). Nothing is ever written outside the --out folder.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medsamkit.annotate.state import ImageAnnotation
from medsamkit.core.atomic import write_bytes_atomic, write_json_atomic
from medsamkit.core.errors import InputError

FORMAT = "medsamkit-annotate/1"


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of a 2D uint8/uint16 array or an (H, W, 3|4) uint8 array."""
    if array.ndim == 3 and array.shape[-1] not in (3, 4):
        raise InputError("a volume has no single PNG: ask /api/volume/ID/labels?axis=&slice= for one view")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class AnnotationStore:
    """The --out folder of a session; ids are the source's safe ids, so every path stays inside it."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out).resolve()
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"{self.out}: --out must be a folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self._source = None  # the ImageSource, for the grids volumes are written on

    def attach(self, source) -> None:
        """Let the store find each volume's grid (its labels are written on it)."""
        self._source = source

    def _inside(self, name: str) -> Path:
        path = (self.out / name).resolve()
        if path.parent != self.out:
            raise InputError(f"{name}: not a file name inside {self.out}")
        return path

    def label_path(self, image_id: str) -> Path:
        """The instance PNG of an image."""
        return self._inside(f"{image_id}.png")

    def class_path(self, image_id: str) -> Path:
        """The class map PNG of an image."""
        return self._inside(f"{image_id}.classes.png")

    def record_path(self, image_id: str) -> Path:
        """The JSON of an image's objects."""
        return self._inside(f"{image_id}.json")

    @property
    def embedding_folder(self) -> Path:
        """Where the embedding cache lives."""
        return self.out / "embeddings"

    def save(self, image_id: str, name: str, state: ImageAnnotation, classes: list[str],
             source: str | None = None) -> None:
        """Write the image's PNG(s) and JSON (PNG first: a JSON never names objects its PNG lacks);
        ``source``: the folder or SPEC the image comes from (what training reads it back from)."""
        if state.label.ndim == 3:
            from medsamkit.annotate.volume_export import save_volume

            self._inside(f"{image_id}.json")
            identity = next((r for r in state.records.values() if r.get("model")), {})
            entry = self._source.entry(image_id)
            save_volume(self.out, image_id, name, state, classes, entry.grid, identity, entry.loaded().classes)
            return
        write_bytes_atomic(self.label_path(image_id), png_bytes(state.label))
        class_map = state.class_map(classes) if classes else None
        if class_map is not None:
            dtype = np.uint8 if len(classes) < 256 else np.uint16
            write_bytes_atomic(self.class_path(image_id), png_bytes(class_map.astype(dtype)))
        else:
            self.class_path(image_id).unlink(missing_ok=True)
        write_json_atomic(self.record_path(image_id), {
            "format": FORMAT, "image": name, "id": image_id, "shape": list(state.label.shape), "source": source,
            "classes": classes, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "objects": state.objects(),
        })

    def load(self, image_id: str, shape: tuple[int, int]) -> ImageAnnotation | None:
        """The saved annotation of an image, or None when it has none yet."""
        if len(shape) == 3:
            from medsamkit.annotate.volume_export import load_volume

            self._inside(f"{image_id}.json")
            return load_volume(self.out, image_id, tuple(shape))
        png, record = self.label_path(image_id), self.record_path(image_id)
        if not png.is_file() or not record.is_file():
            return None
        try:
            meta = json.loads(record.read_text())
            with Image.open(png) as im:
                label = np.asarray(im).astype(np.uint16)
        except Exception as exc:  # damaged by hand: say which file, do not guess
            raise InputError(f"{record}: unreadable annotation ({type(exc).__name__}: {exc})") from None
        if meta.get("format") != FORMAT or tuple(label.shape) != tuple(shape[:2]):
            raise InputError(f"{png}: not an annotation of this image (format or size differs)")
        records = {int(r["id"]): r for r in meta.get("objects", [])}
        state = ImageAnnotation.from_label_map(label, records, source=str(png))
        for oid, rec in records.items():
            if oid not in state.records:  # painted over completely: keep its record, it has no pixels
                state.records[oid] = {**rec, "area": 0}
        return state

    def save_session(self, current: str | None) -> None:
        """Remember the image the person is on."""
        write_json_atomic(self.out / "session.json", {"format": FORMAT, "current": current})

    def load_session(self) -> dict:
        """What ``save_session`` wrote (empty when nothing yet)."""
        path = self.out / "session.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            return {}
