"""Data SPECs -> datasets of 2D cases (DESIGN.md "Data SPEC").

A SPEC is a folder with images/ + labels/ (same stems), a builtin:NAME, a NIfTI/NRRD image (label found as
a sibling or given as IMAGE::LABEL), an nnU-Net folder (imagesTr/ + labelsTr/), or a DICOM series folder
with an RTSTRUCT. Volumes are served slice by slice (axial), with their spacing and slice index recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.io.images import IMAGE_SUFFIXES, read_image, read_label


@dataclass
class Case:
    """One 2D image with its label map (instances or classes)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    kind: str = "instance"  # "instance" or "class"
    spacing: tuple[float, float] = (1.0, 1.0)  # (row, col) mm
    meta: dict = field(default_factory=dict)


@dataclass
class VolumeCase:
    """One volume with its label volume, served slice by slice."""

    name: str
    image: np.ndarray  # (Z, Y, X) intensity, already windowed to [0,1] for display / prompting
    label: np.ndarray  # (Z, Y, X) integer
    spacing: tuple[float, float, float]
    kind: str = "class"
    meta: dict = field(default_factory=dict)

    def slices(self, only_labelled: bool = True) -> Iterator[Case]:
        """Axial slices as 2D cases (only those with a label when `only_labelled`)."""
        for z in range(self.image.shape[0]):
            lab = self.label[z]
            if only_labelled and not lab.any():
                continue
            yield Case(f"{self.name}/z{z:03d}", self.image[z], lab, self.kind, self.spacing[1:],
                       {"volume": self.name, "z": z})


@dataclass
class Dataset:
    """A named, lazily loaded collection of 2D cases (and volumes when the source is 3D)."""

    name: str
    loaders: list[Callable[[], Case | VolumeCase]]
    description: str = ""
    kind: str = "instance"

    def __len__(self) -> int:
        return len(self.loaders)

    def items(self) -> Iterator[Case | VolumeCase]:
        """Cases or volumes in order, loaded one at a time."""
        for load in self.loaders:
            yield load()

    def cases(self, max_items: int | None = None) -> Iterator[Case]:
        """All 2D cases (volumes expanded into their labelled slices); `max_items` limits images/volumes."""
        for i, item in enumerate(self.items()):
            if max_items is not None and i >= max_items:
                return
            if isinstance(item, VolumeCase):
                yield from item.slices()
            else:
                yield item


def _folder_dataset(root: Path, kind: str) -> Dataset:
    img_dir, lab_dir = root / "images", root / "labels"
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    labels = {p.stem: p for p in sorted(lab_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    stems = sorted(set(images) & set(labels))
    if not stems:
        raise InputError(f"{root}: no image/label pairs with matching stems in images/ and labels/")

    def loader(stem: str) -> Callable[[], Case]:
        def load() -> Case:
            img, lab = read_image(images[stem]), read_label(labels[stem])
            if img.shape[:2] != lab.shape[:2]:
                raise InputError(
                    f"{labels[stem]}: label size {lab.shape[:2]} does not match image size {img.shape[:2]}"
                )
            return Case(stem, img, lab, kind, meta={"image_path": str(images[stem])})

        return load

    return Dataset(root.name, [loader(s) for s in stems], f"folder {root}", kind)


def open_dataset(spec: str | Path, kind: str | None = None, window: str | tuple[float, float] | None = None) -> Dataset:
    """Open a data SPEC (see module docstring); InputError with the reason when it is not usable.

    ``window`` (a CT/MR intensity window: a name or (lo, hi)) applies to volume SPECs; 2D images ignore it.
    """
    if isinstance(window, str) and "," in window:
        from medsamkit.io.windowing import parse_window

        window = parse_window(window)
    spec_s = str(spec)
    if spec_s.startswith("builtin:"):
        from medsamkit.io.builtin import open_builtin

        return open_builtin(spec_s.split(":", 1)[1], window)
    if "::" in spec_s:
        img, lab = spec_s.split("::", 1)
        from medsamkit.io.volume_data import volume_pair_dataset

        return volume_pair_dataset([(Path(img), Path(lab))], kind or "class", window)
    path = Path(spec_s)
    if not path.exists():
        raise InputError(f"{path}: data not found (expected a folder, a volume file or builtin:NAME)")
    if path.is_dir() and (path / "images").is_dir() and (path / "labels").is_dir():
        return _folder_dataset(path, kind or "instance")
    from medsamkit.io.volume_data import open_volume_spec

    return open_volume_spec(path, kind or "class", window)
