"""A 2D data SPEC: a folder with images/ and labels/ holding files of the same stems."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medsamkit.core.errors import InputError
from medsamkit.io.cases import Case, Dataset
from medsamkit.io.images import IMAGE_SUFFIXES, read_image, read_label


def image_folder_dataset(root: Path, kind: str = "instance") -> Dataset:
    """Cases for each stem present in both images/ and labels/; `InputError` when no pair matches."""
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

    return Dataset(root.name, [loader(s) for s in stems], f"folder {root}", kind, stems)
