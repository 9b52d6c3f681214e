"""3D volumes with a 2D SAM-family model: slice-wise prompting, box propagation, 3-slice input, volumetric
scores, the 3D engine (3D box + clicks) and the CVPR 2025 interactive protocol (`medsamkit segment-volume`,
`medsamkit evaluate-volume`)."""

from medsamkit.volumes.config import EvaluateVolumeConfig, open_volume_dataset
from medsamkit.volumes.engine import Box3D, EngineSettings, VolumeEngine, parse_box3d
from medsamkit.volumes.evaluate import evaluate_case, evaluate_volumes
from medsamkit.volumes.segment import SegmentVolumeConfig, run_segment_volume, segment_volume
from medsamkit.volumes.slices import SliceEmbedder, slice_input

__all__ = [
    "Box3D",
    "EngineSettings",
    "VolumeEngine",
    "parse_box3d",
    "EvaluateVolumeConfig",
    "SegmentVolumeConfig",
    "SliceEmbedder",
    "evaluate_case",
    "evaluate_volumes",
    "open_volume_dataset",
    "run_segment_volume",
    "segment_volume",
    "slice_input",
]
