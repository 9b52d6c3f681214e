"""Writing a binary DICOM SEG (highdicom) on the source series a volume came from, one segment per mask, so a
PACS or viewer shows it over that series; ``io.dicom.seg.read_dicom_seg`` reads it back."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from medsamkit.core.atomic import write_atomic
from medsamkit.io.volume import Volume

_SOURCE_DATASETS: dict[str, list] = {}  # series UID -> source slices (read once per process)


def _source_datasets(grid: Volume) -> list:
    import pydicom

    uid = str(grid.meta["SeriesInstanceUID"])
    if uid not in _SOURCE_DATASETS:
        _SOURCE_DATASETS[uid] = [pydicom.dcmread(f) for f in grid.meta["files"]]
    return _SOURCE_DATASETS[uid]


def write_dicom_seg(path: Path, grid: Volume, parts: list[tuple[str, np.ndarray]], algorithm_name: str) -> None:
    """A binary DICOM SEG of ``parts`` (segment label, bool (Z, Y, X) mask) on the series ``grid`` was read
    from (frames in slice order); ``algorithm_name`` names what made the masks."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medsamkit import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=__version__, family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=label[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=algorithm) for i, (label, _) in enumerate(parts)]
    pixels = np.stack([m for _, m in parts], axis=-1).astype(np.uint8)  # (Z, Y, X, segments)
    with warnings.catch_warnings():  # highdicom's advice on the source's PatientName is not ours to act on
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=_source_datasets(grid), pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=9001, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="medsamkit", manufacturer_model_name="medsamkit annotate", software_versions=__version__,
            device_serial_number="0", series_description="medsamkit annotate")
    write_atomic(path, seg.save_as)


def is_dicom_grid(grid: Volume) -> bool:
    """Whether ``grid`` was read from a DICOM series whose files a SEG can reference."""
    return "SOPInstanceUIDs" in grid.meta and bool(grid.meta.get("files"))
