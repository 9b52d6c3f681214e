"""What a data SPEC is, decided in one place (``resolve_spec``), and how each kind opens.

A SPEC is ``builtin:NAME``, a NIfTI/NRRD ``IMAGE::LABEL`` pair, a folder with ``images/`` + ``labels/`` of the
same stems, an nnU-Net folder (``imagesTr/`` + ``labelsTr/``), a DICOM series folder (labels from its RTSTRUCT /
SEG files), an annotation folder (the --out of `medsamkit annotate`), a single NIfTI/NRRD file, a folder of
them, or a plain folder of 2D images (optional ``labels/``). The last three have no labels to evaluate or
train on; the annotator opens them to annotate from scratch.

``Spec.open`` gives the labelled ``Dataset`` the batch verbs read (``io.datasets.open_dataset``);
``Spec.items`` gives every image or volume with its name and a loader whose label may be None (the annotator).
The volume readers (nibabel, pynrrd, pydicom) are imported only when a SPEC needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.io.annotations import (
    annotation_records,
    is_annotation_folder,
    read_instance_png,
    usable_objects,
)
from medsamkit.io.builtin import BUILTINS, open_builtin
from medsamkit.io.cases import Case, Dataset, VolumeCase
from medsamkit.io.images import IMAGE_SUFFIXES, image_shape, read_image, read_label
from medsamkit.io.volume import DICOM_FILE_SUFFIXES, is_volume_file
from medsamkit.io.windowing import WindowChoice, parse_window

NOT_A_SPEC = "images/+labels/ folder, imagesTr/+labelsTr/, DICOM folder, IMAGE::LABEL volumes, or builtin:NAME"


class SpecKind(Enum):
    """The kinds of data SPEC (see the module docstring)."""

    BUILTIN = "builtin"
    PAIR = "IMAGE::LABEL volume pair"
    IMAGE_FOLDER = "images/ + labels/ folder"
    NNUNET = "nnU-Net folder"
    DICOM = "DICOM series folder"
    ANNOTATIONS = "annotation folder"
    VOLUME_FILE = "volume file"
    VOLUME_FOLDER = "folder of volume files"
    IMAGES = "folder of images"


@dataclass(frozen=True)
class SpecItem:
    """One image or volume of a SPEC: its name, what it is, and its loader (label None where it has none)."""

    name: str
    volume: bool
    load: Callable[[], Case | VolumeCase]
    shape: Callable[[], tuple[int, ...]]  # 2D: (H, W), from the file header where the format allows
    stem: str = ""  # the name without a file suffix (what ids and file names are made of); "" : the name

    @property
    def key(self) -> str:
        """The name ids are made from: the file stem of a plain image, else the name."""
        return self.stem or self.name


@dataclass(frozen=True)
class Spec:
    """A recognised SPEC: its kind, the text given, and the paths it names."""

    text: str
    kind: SpecKind
    path: Path | None = None  # the folder or file (the image of a pair)
    label: Path | None = None  # the label of a pair

    @property
    def volumes(self) -> bool:
        """Whether its items are volumes (3D) rather than 2D images."""
        if self.kind is SpecKind.BUILTIN:
            return BUILTINS[self.text.split(":", 1)[1]].volumes
        return self.kind in (SpecKind.PAIR, SpecKind.NNUNET, SpecKind.DICOM, SpecKind.VOLUME_FILE,
                             SpecKind.VOLUME_FOLDER)

    @property
    def record(self) -> str:
        """How the SPEC is written down to be found again from any working folder (absolute paths)."""
        if self.kind is SpecKind.BUILTIN:
            return self.text
        if self.kind is SpecKind.PAIR:
            return f"{self.path.resolve()}::{self.label.resolve()}"
        return str(self.path.resolve())

    def open(self, kind: str | None = None, window: str | tuple[float, float] | None = None) -> Dataset:
        """The labelled dataset (``kind``: instance/class label meaning; ``window``: CT/MR window of volumes)."""
        if isinstance(window, str):
            window = parse_window(window)
        return _OPENERS[self.kind](self, kind, window)

    def items(self, window: str | tuple[float, float] | None = None) -> list[SpecItem]:
        """Every image or volume, labelled or not, in order."""
        if isinstance(window, str):
            window = parse_window(window)
        return _ITEMS.get(self.kind, _dataset_items)(self, window)


def _looks_dicom(files: list[Path]) -> bool:
    if any(p.suffix.lower() in DICOM_FILE_SUFFIXES for p in files):
        return True
    for p in files[:3]:
        with open(p, "rb") as fh:
            if fh.read(132)[128:132] == b"DICM":
                return True
    return False


def resolve_spec(spec: str | Path) -> Spec:
    """What ``spec`` is (InputError naming it when it is nothing we read)."""
    text = str(spec)
    if text.startswith("builtin:"):
        name = text.split(":", 1)[1]
        if name not in BUILTINS:
            raise InputError(f"unknown builtin dataset {name!r}; choose one of: {', '.join(BUILTINS)}")
        return Spec(text, SpecKind.BUILTIN)
    if "::" in text:
        image, label = text.split("::", 1)
        return Spec(text, SpecKind.PAIR, Path(image), Path(label))
    path = Path(text)
    if not path.exists():
        raise InputError(f"{path}: data not found (expected a folder, a volume file or builtin:NAME)")
    if path.is_file():
        if is_volume_file(path):
            return Spec(text, SpecKind.VOLUME_FILE, path)
        raise InputError(f"{path}: not a data SPEC ({NOT_A_SPEC})")
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return Spec(text, SpecKind.IMAGE_FOLDER, path)
    if (path / "imagesTr").is_dir() and (path / "labelsTr").is_dir():
        return Spec(text, SpecKind.NNUNET, path)
    if (path / "images").is_dir():
        return Spec(text, SpecKind.IMAGES, path)
    if is_annotation_folder(path):
        return Spec(text, SpecKind.ANNOTATIONS, path)
    files = [p for p in sorted(path.iterdir()) if p.is_file()]
    if any(is_volume_file(p) for p in files):
        return Spec(text, SpecKind.VOLUME_FOLDER, path)
    if files and _looks_dicom(files):
        return Spec(text, SpecKind.DICOM, path)
    return Spec(text, SpecKind.IMAGES, path)


# --- labelled datasets ---------------------------------------------------------------------------------
def _open_pair(spec: Spec, kind: str | None, window: WindowChoice) -> Dataset:
    from medsamkit.io.volume_data import volume_pair_dataset

    return volume_pair_dataset([(spec.path, spec.label)], kind or "class", window)


def _open_nnunet(spec: Spec, kind: str | None, window: WindowChoice) -> Dataset:
    from medsamkit.io.nnunet import nnunet_dataset

    return nnunet_dataset(spec.path, kind or "class", window)


def _open_dicom(spec: Spec, kind: str | None, window: WindowChoice) -> Dataset:
    from medsamkit.io.volume_data import dicom_folder_dataset

    return dicom_folder_dataset(spec.path, kind or "class", window)


def _open_image_folder(spec: Spec, kind: str | None, window: WindowChoice) -> Dataset:
    from medsamkit.io.image_folder import image_folder_dataset

    return image_folder_dataset(spec.path, kind or "instance")


def _unlabelled(spec: Spec, kind: str | None, window: WindowChoice) -> Dataset:
    if spec.kind is SpecKind.VOLUME_FILE:
        raise InputError(f"{spec.path}: a single volume needs its label: use --data IMAGE::LABEL")
    raise InputError(f"{spec.path}: not a data SPEC ({NOT_A_SPEC}); it is a {spec.kind.value} without labels")


def _open_annotations(spec: Spec, kind: str | None, window: WindowChoice) -> Dataset:
    """The images of an annotation folder that have usable objects (committed, with pixels, not hidden); each
    image is read again from the SPEC the session recorded, as the session read it."""
    folder = spec.path
    loaders, names = [], []
    for record, meta in annotation_records(folder):
        if usable_objects(meta):
            loaders.append(lambda record=record, meta=meta: _annotated_case(record, meta))
            names.append(str(meta.get("id", record.stem)))
    if not loaders:
        raise InputError(f"{folder}: no committed objects to train on")
    return Dataset(folder.name or str(folder), loaders, f"annotations in {folder}", "instance", names)


def _annotated_case(record: Path, meta: dict) -> Case:
    keep = usable_objects(meta)
    png = record.with_suffix(".png")
    label = read_instance_png(png)
    label[~np.isin(label, keep)] = 0
    source, name = meta.get("source"), meta.get("image")
    if not source or not name:
        raise InputError(f"{record}: no 'source' (the folder or SPEC the image came from); open the folder once "
                         "with `medsamkit annotate SOURCE --out ...` to record it")
    item = next((i for i in resolve_spec(source).items() if i.name == name), None)
    if item is None:
        raise InputError(f"{record}: image {name!r} not found in {source}")
    image = item.load().image
    if tuple(image.shape[:2]) != tuple(label.shape):
        raise InputError(f"{png}: {label.shape} does not match its image {tuple(image.shape[:2])}")
    return Case(str(meta.get("id", record.stem)), image, label, "instance",
                meta={"annotation": str(record), "objects": keep})


def _open_builtin(spec: Spec, kind: str | None, window: WindowChoice) -> Dataset:
    return open_builtin(spec.text.split(":", 1)[1], window)


_OPENERS = {SpecKind.BUILTIN: _open_builtin, SpecKind.PAIR: _open_pair, SpecKind.IMAGE_FOLDER: _open_image_folder,
            SpecKind.NNUNET: _open_nnunet, SpecKind.DICOM: _open_dicom, SpecKind.ANNOTATIONS: _open_annotations,
            SpecKind.VOLUME_FILE: _unlabelled, SpecKind.VOLUME_FOLDER: _unlabelled, SpecKind.IMAGES: _unlabelled}


# --- items, labelled or not ----------------------------------------------------------------------------
def _dataset_items(spec: Spec, window: WindowChoice) -> list[SpecItem]:
    """A labelled SPEC's cases; names the SPEC does not tell are read from the cases themselves."""
    dataset = spec.open(window=window)
    names = dataset.names or [load().name for load in dataset.loaders]
    volume = spec.volumes
    return [SpecItem(name, volume, load, _loaded_shape(load)) for name, load in zip(names, dataset.loaders)]


def _loaded_shape(load: Callable[[], Case | VolumeCase]) -> Callable[[], tuple[int, ...]]:
    def shape() -> tuple[int, ...]:
        case = load()
        return tuple(case.image.shape[:3] if isinstance(case, VolumeCase) else case.image.shape[:2])

    return shape


def _image_folder_items(spec: Spec, window: WindowChoice) -> list[SpecItem]:
    """The image/label pairs of an images/ + labels/ folder, named by stem; shapes from the image headers."""
    dataset = spec.open()
    files = {p.stem: p for p in sorted((spec.path / "images").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    return [SpecItem(stem, False, load, lambda p=files[stem]: image_shape(p))
            for stem, load in zip(dataset.names, dataset.loaders)]


def _plain_image_items(spec: Spec, window: WindowChoice) -> list[SpecItem]:
    """A plain folder of images (or its images/ subfolder); labels from labels/ with the same stem."""
    folder = spec.path
    img_dir = folder / "images" if (folder / "images").is_dir() else folder
    lab_dir = folder / "labels"
    labels = {p.stem: p for p in sorted(lab_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES} \
        if lab_dir.is_dir() else {}
    files = [p for p in sorted(img_dir.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputError(f"{folder}: no images (PNG/TIF/JPG/BMP) found")

    def item(path: Path) -> SpecItem:
        label = labels.get(path.stem)

        def load() -> Case:
            return Case(path.name, read_image(path), None if label is None else read_label(label), "instance",
                        meta={"image_path": str(path)})

        return SpecItem(path.name, False, load, lambda: image_shape(path), path.stem)

    return [item(p) for p in files]


def _volume_file_items(spec: Spec, window: WindowChoice) -> list[SpecItem]:
    from medsamkit.io.volume_data import unlabelled_volume, volume_name

    paths = [spec.path] if spec.kind is SpecKind.VOLUME_FILE else \
        [p for p in sorted(spec.path.iterdir()) if p.is_file() and is_volume_file(p)]
    return [SpecItem(volume_name(p), True, lambda p=p: unlabelled_volume(p, window), _loaded_shape(
        lambda p=p: unlabelled_volume(p, window))) for p in paths]


def _dicom_items(spec: Spec, window: WindowChoice) -> list[SpecItem]:
    from medsamkit.io.volume_data import read_dicom_case

    def load() -> VolumeCase:
        return read_dicom_case(spec.path, "class", window, labels_required=False)

    return [SpecItem(spec.path.name, True, load, _loaded_shape(load))]


_ITEMS = {SpecKind.IMAGE_FOLDER: _image_folder_items, SpecKind.IMAGES: _plain_image_items,
          SpecKind.ANNOTATIONS: _plain_image_items, SpecKind.VOLUME_FILE: _volume_file_items,
          SpecKind.VOLUME_FOLDER: _volume_file_items, SpecKind.DICOM: _dicom_items}
