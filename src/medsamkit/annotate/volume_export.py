"""A volume's annotation files under --out, written after every change (atomically, label map first):

- ``ID.nii.gz``: uint8/uint16 object ids on the input's grid with its affine (opens aligned over the image
  in 3D Slicer / ITK-SNAP); ``ID.classes.nii.gz``: class index (1 = first class) when classes are used;
- ``ID.json``: the per-object log (class, per-view prompts or propagation, propagation runs with their
  settings and stop reasons, model + checkpoint sha256, time, clicks) and the class map;
- ``ID.seg.dcm`` for DICOM input: a DICOM SEG (highdicom) referencing the source series, one segment per
  class (per object when no classes are used), readable by ``medsamkit.io.dicom.seg.read_dicom_seg``.
"""

from __future__ import annotations

import numpy as np

from medsamkit.annotate.state import ImageAnnotation
from medsamkit.io.annotations import AnnotationFolder
from medsamkit.io.dicom.seg_write import is_dicom_grid
from medsamkit.io.volume import Volume


def segments(state: ImageAnnotation, classes: list[str],
             input_names: dict[int, str] | None = None) -> list[tuple[str, np.ndarray]]:
    """(label, bool mask) per class with objects; per object when no object has a class, named by the
    input's ROI / label name for objects that came from the input's label file, else "object N"."""
    with_class = [r for r in state.records.values() if r.get("class") is not None and r.get("area", 0) > 0]
    if classes and with_class:
        out = []
        for name in classes:
            ids = [oid for oid, r in state.records.items() if r.get("class") == name]
            if ids:
                mask = np.isin(state.label, ids)
                if mask.any():
                    out.append((name, mask))
        return out
    names = input_names or {}

    def name(oid: int) -> str:
        from_input = str(state.records[oid].get("source", "")).endswith("labels") and oid in names
        return names[oid] if from_input else f"object {oid}"

    return [(name(oid), state.label == oid) for oid in sorted(state.records)
            if state.records[oid].get("area", 0) > 0]


def save_volume(files: AnnotationFolder, image_id: str, name: str, state: ImageAnnotation, classes: list[str],
                grid: Volume, input_names: dict[int, str] | None = None) -> None:
    """Write the volume's NIfTI label map (+ class map), its DICOM SEG (DICOM input) and the JSON log."""
    identity = next((r for r in state.records.values() if r.get("model")), {})
    class_map = state.class_map(classes) if classes else None
    parts = segments(state, classes, input_names) if is_dicom_grid(grid) else None
    files.write_volume(image_id, name, state.label, state.objects(), classes, class_map, grid, parts,
                       f"medsamkit annotate ({identity.get('model', 'model')})")
