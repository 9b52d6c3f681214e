"""A volume's annotation files under --out, written after every change (atomically, label map first):

- ``ID.nii.gz``: uint8/uint16 object ids on the input's grid with its affine (opens aligned over the image
  in 3D Slicer / ITK-SNAP); ``ID.classes.nii.gz``: class index (1 = first class) when classes are used;
- ``ID.json``: the per-object log (class, per-view prompts or propagation, propagation runs with their
  settings and stop reasons, model + checkpoint sha256, time, clicks) and the class map;
- ``ID.seg.dcm`` for DICOM input: a DICOM SEG (highdicom) referencing the source series, one segment per
  class (per object when no classes are used), readable by ``medsamkit.io.dicom.seg.read_dicom_seg``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np

from medsamkit.annotate.state import ImageAnnotation
from medsamkit.core.atomic import write_atomic, write_json_atomic
from medsamkit.core.errors import InputError
from medsamkit.io.volume import Volume
from medsamkit.volumes.masks import write_label_map

FORMAT = "medsamkit-annotate-volume/1"
_SOURCE_DATASETS: dict[str, list] = {}  # series UID -> source slices (read once per session)


def volume_paths(out: Path, image_id: str) -> dict[str, Path]:
    """The files of a volume's annotation."""
    return {"label": out / f"{image_id}.nii.gz", "classes": out / f"{image_id}.classes.nii.gz",
            "log": out / f"{image_id}.json", "seg": out / f"{image_id}.seg.dcm"}


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


def _source_datasets(grid: Volume) -> list:
    import pydicom

    uid = str(grid.meta["SeriesInstanceUID"])
    if uid not in _SOURCE_DATASETS:
        _SOURCE_DATASETS[uid] = [pydicom.dcmread(f) for f in grid.meta["files"]]
    return _SOURCE_DATASETS[uid]


def write_dicom_seg(path: Path, grid: Volume, parts: list[tuple[str, np.ndarray]], identity: dict) -> None:
    """A binary DICOM SEG of ``parts`` on the source series ``grid`` came from (frames in slice order)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medsamkit import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"medsamkit annotate ({identity.get('model', 'model')})", version=__version__,
        family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=label[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=algorithm) for i, (label, _) in enumerate(parts)]
    pixels = np.stack([m for _, m in parts], axis=-1).astype(np.uint8)  # (Z, Y, X, segments)
    with warnings.catch_warnings():  # highdicom's advice on the source's PatientName is not ours to act on
        warnings.simplefilter("ignore", UserWarning)
        seg = _segmentation(hd, grid, pixels, descriptions)
    write_atomic(path, seg.save_as)


def _segmentation(hd, grid: Volume, pixels: np.ndarray, descriptions: list):
    from medsamkit import __version__

    return hd.seg.Segmentation(
        source_images=_source_datasets(grid), pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=9001, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="medsamkit", manufacturer_model_name="medsamkit annotate", software_versions=__version__,
        device_serial_number="0", series_description="medsamkit annotate")


def save_volume(out: Path, image_id: str, name: str, state: ImageAnnotation, classes: list[str],
                grid: Volume, identity: dict | None = None, input_names: dict[int, str] | None = None) -> None:
    """Write the volume's NIfTI label map (+ class map), its DICOM SEG (DICOM input) and the JSON log."""
    paths = volume_paths(out, image_id)
    write_label_map(state.label, paths["label"], like=grid)
    class_map = state.class_map(classes) if classes else None
    if class_map is not None:
        write_label_map(class_map, paths["classes"], like=grid)
    else:
        paths["classes"].unlink(missing_ok=True)
    if "SOPInstanceUIDs" in grid.meta and grid.meta.get("files"):
        parts = segments(state, classes, input_names)
        if parts:
            write_dicom_seg(paths["seg"], grid, parts, identity or {})
        else:
            paths["seg"].unlink(missing_ok=True)
    write_json_atomic(paths["log"], {
        "format": FORMAT, "image": name, "id": image_id, "shape": list(state.label.shape),
        "spacing": [float(s) for s in grid.spacing], "affine": np.asarray(grid.affine).tolist(),
        "classes": classes, "class_values": {c: i + 1 for i, c in enumerate(classes)},
        "label_file": paths["label"].name, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "objects": state.objects()})


def load_volume(out: Path, image_id: str, shape: tuple[int, int, int]) -> ImageAnnotation | None:
    """The saved annotation of a volume, or None when it has none yet."""
    from medsamkit.io.nifti_nrrd import read_nifti

    paths = volume_paths(out, image_id)
    if not paths["label"].is_file() or not paths["log"].is_file():
        return None
    try:
        meta = json.loads(paths["log"].read_text())
        label = np.asarray(read_nifti(paths["label"]).array)
    except Exception as exc:  # damaged by hand: say which file, do not guess
        raise InputError(f"{paths['log']}: unreadable annotation ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT or tuple(label.shape) != tuple(shape):
        raise InputError(f"{paths['label']}: not an annotation of this volume (format or size differs)")
    records = {int(r["id"]): r for r in meta.get("objects", [])}
    state = ImageAnnotation.from_label_map(label.astype(np.uint16), records, source=str(paths["label"]))
    for oid, rec in records.items():
        if oid not in state.records:
            state.records[oid] = {**rec, "area": 0}
    return state

