"""The cases every data SPEC yields: a 2D `Case`, a `VolumeCase` served slice by slice, and a lazy `Dataset`.

A leaf module: the SPEC readers (`image_folder`, `volume_data`, `nnunet`, `builtin`) import it, and
`medsamkit.io.datasets.open_dataset` dispatches to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Case:
    """One 2D image with its label map (instances or classes)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    kind: str = "instance"  # "instance" or "class"
    spacing: tuple[float, float] = (1.0, 1.0)  # (row, col) mm
    meta: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        """The image or patient volume the case comes from: the unit that data splits keep whole."""
        return str(self.meta.get("volume", self.name))


@dataclass
class VolumeCase:
    """One volume with its label volume, served slice by slice."""

    name: str
    image: np.ndarray  # (Z, Y, X) intensity, already windowed to [0,1] for display / prompting
    label: np.ndarray | None  # (Z, Y, X) integer; None for a volume opened without labels (to annotate)
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
    names: list[str] = field(default_factory=list)  # each loader's case name, where the SPEC tells it unread

    def __len__(self) -> int:
        return len(self.loaders)

    def head(self, max_items: int | None) -> Dataset:
        """The first ``max_items`` images/volumes (all when None): what ``--max-images`` means everywhere."""
        if max_items is None:
            return self
        return Dataset(self.name, self.loaders[:max_items], self.description, self.kind, self.names[:max_items])

    def items(self) -> Iterator[Case | VolumeCase]:
        """Cases or volumes in order, loaded one at a time."""
        for load in self.loaders:
            yield load()

    def cases(self, max_items: int | None = None) -> Iterator[Case]:
        """All 2D cases (volumes expanded into their labelled slices); `max_items` limits images/volumes."""
        for item in self.head(max_items).items():
            if isinstance(item, VolumeCase):
                yield from item.slices()
            else:
                yield item
