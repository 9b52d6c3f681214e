"""The annotation folder (the --out of `medsamkit annotate`): its one reader and writer.

Per 2D image ``ID.png`` (uint16 instance ids), ``ID.classes.png`` (class index, 1 = first class, when classes
are used) and ``ID.json`` (format ``FORMAT``: name, shape, the SPEC it came from, classes, each object's record);
per volume ``ID.nii.gz`` (object ids on the input's grid, with its affine), ``ID.classes.nii.gz``, ``ID.seg.dcm``
(DICOM input: a DICOM SEG on the source series) and ``ID.json`` (format ``VOLUME_FORMAT``: also spacing, affine
and class values); ``session.json`` holds the image the person was on; ``uploads/`` the images a client sent
(``write_upload``), a plain image or volume folder that training reads them from again. Every file is written atomically, label
maps before the JSON, so a JSON never names objects its label map lacks; text that could not be read back as
UTF-8 (lone surrogates) is refused before anything is written. Ids are file-safe, and every path is checked to
stay inside the folder.

The annotator saves and loads through ``AnnotationFolder``; training reads the folder with ``annotation_records``
and ``usable_objects`` (``io.spec`` opens it as a dataset: ``finetune --data ANNOTATIONS_DIR``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsamkit.core.atomic import write_bytes_atomic, write_json_atomic
from medsamkit.core.errors import InputError
from medsamkit.io.volume import Volume

FORMAT = "medsamkit-annotate/1"
VOLUME_FORMAT = "medsamkit-annotate-volume/1"
SESSION_FILE = "session.json"
UPLOADS = "uploads"  # images a client sent (MONAI Label's PUT /datastore/image): out/uploads/NAME


@dataclass
class SavedAnnotation:
    """What a folder holds for one image or volume: the instance map and every object's record by id (objects
    painted over completely included: they have no pixels but keep their record)."""

    label: np.ndarray
    records: dict[int, dict]


def now() -> str:
    """The local time stamp every record and file carries."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def check_text(value: object, where: str) -> None:
    """InputError when a string inside ``value`` cannot be written as UTF-8 (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{where}: text {value[:40]!r} is not valid Unicode (lone surrogate)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, where)
            check_text(v, where)
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_text(v, where)


def _repaired(value: object) -> object:
    """``value`` with lone surrogates (written by earlier versions) replaced, so it can be served again."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_repaired(k): _repaired(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_repaired(v) for v in value]
    return value


def _read_json(path: Path) -> dict:
    return _repaired(json.loads(path.read_text()))


def _records(meta: dict) -> dict[int, dict]:
    return {int(r["id"]): r for r in meta.get("objects", [])}


class AnnotationFolder:
    """The files of one annotation folder (created when missing)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out).resolve()
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"{self.out}: --out must be a folder")
        self.out.mkdir(parents=True, exist_ok=True)

    def inside(self, name: str) -> Path:
        """``out/name``, refused when it would lie anywhere else."""
        path = (self.out / name).resolve()
        if path.parent != self.out:
            raise InputError(f"{name}: not a file name inside {self.out}")
        return path

    def image_paths(self, image_id: str) -> dict[str, Path]:
        """The files of a 2D image's annotation."""
        return {"label": self.inside(f"{image_id}.png"), "classes": self.inside(f"{image_id}.classes.png"),
                "log": self.inside(f"{image_id}.json")}

    def volume_paths(self, image_id: str) -> dict[str, Path]:
        """The files of a volume's annotation."""
        return {"label": self.inside(f"{image_id}.nii.gz"), "classes": self.inside(f"{image_id}.classes.nii.gz"),
                "log": self.inside(f"{image_id}.json"), "seg": self.inside(f"{image_id}.seg.dcm")}

    @property
    def embedding_folder(self) -> Path:
        """Where the session's embedding cache lives."""
        return self.out / "embeddings"

    # --- 2D images -----------------------------------------------------------------------------------
    def write_image(self, image_id: str, name: str, label: np.ndarray, objects: list[dict], classes: list[str],
                    class_map: np.ndarray | None, source: str | None) -> None:
        """Write a 2D image's instance PNG, class PNG (removed when None) and JSON; ``source``: the folder or
        SPEC the image comes from (what training finds it again by)."""
        from medsamkit.io.images import png_bytes

        paths = self.image_paths(image_id)
        meta = {"format": FORMAT, "image": name, "id": image_id, "shape": list(label.shape), "source": source,
                "classes": classes, "saved": now(), "objects": objects}
        check_text(meta, str(paths["log"]))
        write_bytes_atomic(paths["label"], png_bytes(label))
        if class_map is not None:
            dtype = np.uint8 if len(classes) < 256 else np.uint16
            write_bytes_atomic(paths["classes"], png_bytes(class_map.astype(dtype)))
        else:
            paths["classes"].unlink(missing_ok=True)
        write_json_atomic(paths["log"], meta)

    def read_image(self, image_id: str, shape: tuple[int, int]) -> SavedAnnotation | None:
        """A 2D image's saved annotation (None when it has none yet)."""
        paths = self.image_paths(image_id)
        if not paths["label"].is_file() or not paths["log"].is_file():
            return None
        try:
            meta = _read_json(paths["log"])
            label = read_instance_png(paths["label"])
            records = _records(meta)
        except Exception as exc:  # damaged by hand: say which file, do not guess
            raise InputError(f"{paths['log']}: unreadable annotation ({type(exc).__name__}: {exc})") from None
        if meta.get("format") != FORMAT or tuple(label.shape) != tuple(shape[:2]):
            raise InputError(f"{paths['label']}: not an annotation of this image (format or size differs)")
        return SavedAnnotation(label.astype(np.uint16), records)

    # --- volumes -------------------------------------------------------------------------------------
    def write_volume(self, image_id: str, name: str, label: np.ndarray, objects: list[dict], classes: list[str],
                     class_map: np.ndarray | None, grid: Volume,
                     segments: list[tuple[str, np.ndarray]] | None = None, algorithm: str = "") -> None:
        """Write a volume's NIfTI label map (+ class map), its DICOM SEG (``segments`` given: DICOM input; an
        empty list removes it) and its JSON log."""
        from medsamkit.io.nifti_nrrd import write_label_map

        paths = self.volume_paths(image_id)
        meta = {"format": VOLUME_FORMAT, "image": name, "id": image_id, "shape": list(label.shape),
                "spacing": [float(s) for s in grid.spacing], "affine": np.asarray(grid.affine).tolist(),
                "classes": classes, "class_values": {c: i + 1 for i, c in enumerate(classes)},
                "label_file": paths["label"].name, "saved": now(), "objects": objects}
        check_text(meta, str(paths["log"]))
        write_label_map(label, paths["label"], like=grid)
        if class_map is not None:
            write_label_map(class_map, paths["classes"], like=grid)
        else:
            paths["classes"].unlink(missing_ok=True)
        if segments:
            from medsamkit.io.dicom.seg_write import write_dicom_seg

            write_dicom_seg(paths["seg"], grid, segments, algorithm)
        elif segments is not None:
            paths["seg"].unlink(missing_ok=True)
        write_json_atomic(paths["log"], meta)

    def read_volume(self, image_id: str, shape: tuple[int, int, int]) -> SavedAnnotation | None:
        """A volume's saved annotation (None when it has none yet)."""
        from medsamkit.io.nifti_nrrd import read_nifti

        paths = self.volume_paths(image_id)
        if not paths["label"].is_file() or not paths["log"].is_file():
            return None
        try:
            meta = _read_json(paths["log"])
            label = np.asarray(read_nifti(paths["label"]).array)
            records = _records(meta)
        except Exception as exc:  # damaged by hand: say which file, do not guess
            raise InputError(f"{paths['log']}: unreadable annotation ({type(exc).__name__}: {exc})") from None
        if meta.get("format") != VOLUME_FORMAT or tuple(label.shape) != tuple(shape):
            raise InputError(f"{paths['label']}: not an annotation of this volume (format or size differs)")
        return SavedAnnotation(label.astype(np.uint16), records)

    def has_annotation(self, image_id: str) -> bool:
        """True when an image or volume has a saved annotation (its JSON)."""
        return self.inside(f"{image_id}.json").is_file()

    # --- images a client sent ------------------------------------------------------------------------
    @property
    def uploads(self) -> Path:
        """The folder of uploaded images (created on first upload)."""
        return self.out / UPLOADS

    def write_upload(self, file_name: str, data: bytes) -> Path:
        """Write an uploaded image as ``uploads/file_name`` atomically (a name only, no folder)."""
        folder = self.uploads
        folder.mkdir(exist_ok=True)
        path = (folder / file_name).resolve()
        if path.parent != folder.resolve() or file_name.startswith("."):
            raise InputError(f"{file_name}: not a file name inside {folder}")
        write_bytes_atomic(path, data)
        return path

    def upload_files(self) -> list[Path]:
        """The uploaded images, in name order."""
        folder = self.uploads
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) \
            if folder.is_dir() else []

    # --- where the person was ------------------------------------------------------------------------
    def save_session(self, current: str | None) -> None:
        """Remember the image the person is on."""
        write_json_atomic(self.out / SESSION_FILE, {"format": FORMAT, "current": current})

    def load_session(self) -> dict:
        """What ``save_session`` wrote (empty when nothing yet or unreadable)."""
        path = self.out / SESSION_FILE
        try:
            return _read_json(path) if path.is_file() else {}
        except (OSError, ValueError):
            return {}


def read_instance_png(path: Path) -> np.ndarray:
    """A saved instance map (uint16 PNG) as an integer array."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im).astype(np.int64)
    except OSError as exc:
        raise InputError(f"{path}: unreadable instance map ({exc})") from None


def annotation_records(folder: str | Path) -> list[tuple[Path, dict]]:
    """(JSON path, content) of every 2D image annotation in a folder, in name order; files being replaced or
    not ours are skipped (the next scan sees them)."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        if path.name == SESSION_FILE:
            continue
        try:
            meta = _read_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("format") == FORMAT and "objects" in meta:
            out.append((path, meta))
    return out


def is_annotation_folder(path: Path) -> bool:
    """True when ``path`` is a folder holding `medsamkit annotate` image annotations."""
    return path.is_dir() and not (path / "images").is_dir() and bool(annotation_records(path))


def usable_objects(meta: dict) -> list[int]:
    """Ids of the objects of one image's JSON a model can learn from (pixels left, not hidden)."""
    return [int(o["id"]) for o in meta.get("objects", []) if o.get("area", 0) > 0 and not o.get("hidden")]


def annotated_objects(folder: str | Path) -> dict[str, list[int]]:
    """{image id: usable object ids} of an annotation folder (images without any left out)."""
    out = {}
    for _, meta in annotation_records(folder):
        ids = usable_objects(meta)
        if ids:
            out[str(meta.get("id"))] = ids
    return out
