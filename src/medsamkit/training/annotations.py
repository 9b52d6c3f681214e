"""An annotation folder (the --out of `medsamkit annotate`) as training data: every ``ID.json`` with its
``ID.png`` instance map is one case; its objects are the committed ones that still have pixels and are not
hidden; the image is found again through the ``source`` the session recorded in the JSON (the folder or
data SPEC it annotated) and the image's name there.

So `medsamkit finetune --data ANNOTATIONS_DIR` and the annotation server's learn job read the same folder
the same way, and the pixels are exactly those the server embedded (its embedding cache is reused).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from medsamkit.core.errors import InputError
from medsamkit.io.cases import Case, Dataset
from medsamkit.io.images import read_image

FORMAT = "medsamkit-annotate/1"  # the annotate package's file format (annotate.storage.FORMAT)


def _records(folder: Path) -> list[tuple[Path, dict]]:
    """(json path, content) of each per-image annotation file of the folder, in name order."""
    out = []
    for path in sorted(folder.glob("*.json")):
        if path.name == "session.json":
            continue
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a file being replaced, or not ours: the next scan sees the new one
        if isinstance(meta, dict) and meta.get("format") == FORMAT and "objects" in meta:
            out.append((path, meta))
    return out


def is_annotation_folder(spec: str | Path) -> bool:
    """True when ``spec`` is a folder holding `medsamkit annotate` files."""
    path = Path(str(spec))
    return path.is_dir() and not (path / "images").is_dir() and bool(_records(path))


def usable_objects(meta: dict) -> list[int]:
    """Ids of the objects of one image's JSON a model can learn from (pixels left, not hidden)."""
    return [int(o["id"]) for o in meta.get("objects", []) if o.get("area", 0) > 0 and not o.get("hidden")]


def annotated_objects(folder: str | Path) -> dict[str, list[int]]:
    """{image id: usable object ids} of an annotation folder (images without any left out)."""
    out = {}
    for _, meta in _records(Path(folder)):
        ids = usable_objects(meta)
        if ids:
            out[str(meta.get("id"))] = ids
    return out


def _image_of(meta: dict, record: Path) -> np.ndarray:
    """The annotated image's pixels, read the way the session read them."""
    source = meta.get("source")
    name = meta.get("image")
    if not source or not name:
        raise InputError(f"{record}: no 'source' recorded (saved by an older medsamkit annotate); "
                         "open the folder once with `medsamkit annotate SOURCE --out ...` to record it")
    root = Path(source)
    if root.is_dir() and not ((root / "images").is_dir() and (root / "labels").is_dir()):
        folder = root / "images" if (root / "images").is_dir() else root
        path = folder / name
        if not path.is_file():
            raise InputError(f"{record}: image {path} not found")
        return read_image(path)
    from medsamkit.io.datasets import open_dataset

    for load in open_dataset(source).loaders:
        case = load()
        if case.name == name:
            return case.image
    raise InputError(f"{record}: image {name!r} not found in {source}")


def _loader(record: Path, meta: dict):
    def load() -> Case:
        keep = usable_objects(meta)
        png = record.with_suffix(".png")
        try:
            with Image.open(png) as im:
                label = np.asarray(im).astype(np.int64)
        except OSError as exc:
            raise InputError(f"{png}: unreadable instance map ({exc})") from None
        label[~np.isin(label, keep)] = 0
        image = _image_of(meta, record)
        if tuple(image.shape[:2]) != tuple(label.shape):
            raise InputError(f"{png}: {label.shape} does not match its image {tuple(image.shape[:2])}")
        return Case(str(meta.get("id", record.stem)), image, label, "instance",
                    meta={"annotation": str(record), "objects": keep})

    return load


def annotation_dataset(folder: str | Path) -> Dataset:
    """The images of an annotation folder that have usable objects, as a lazily loaded dataset."""
    path = Path(str(folder))
    loaders = [_loader(record, meta) for record, meta in _records(path) if usable_objects(meta)]
    if not loaders:
        raise InputError(f"{path}: no committed objects to train on")
    return Dataset(path.name or str(path), loaders, f"annotations in {path}", "instance")
