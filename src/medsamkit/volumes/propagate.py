"""Box propagation through a volume: one prompt on a start slice, then each next slice, up and down, is
prompted with the bounding box of the previous slice's prediction grown by ``margin`` px (default 0). The
slice-to-slice step and its stop rules are the 3D engine's (``volumes.engine.VolumeEngine.walk``, plain
settings); this module only answers the start prompt.

A direction stops where the prediction vanishes (< ``min_area`` px), its predicted IoU falls below
``min_iou`` (default 0: off), or the volume ends. Measured on builtin:lung-gtv with the box-trained
LiteMedSAM (benchmarks/volume_lung.py): a box always yields *some* mask, so "vanishes" rarely happens past
the tumour's end, and predicted IoU on those slices (0.7-0.8) is no lower than on the tumour; tight boxes
shrink the mask from slice to slice, while any margin > 0 compounds and leaks (2 px: 12 false-positive
slices on pat_2). Slice-wise prompting is the reliable mode; propagation is offered as the protocol
describes it, with its numbers reported.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.predictor import Predictor
from medsamkit.prompts import Prompt, stack_prompts
from medsamkit.volumes.engine import EngineSettings, VolumeEngine
from medsamkit.volumes.slices import SliceEmbedder

BoxSlice = tuple[int, float, float, float, float]  # z, x0, y0, x1, y1 (voxel indices of array[z])


def predict_prompts(predictor: Predictor, prompts: list[Prompt]) -> tuple[np.ndarray, np.ndarray]:
    """Masks (P, H, W) and predicted IoU (P,) for prompts of one slice, batched; points padded with -1."""
    masks, iou, _ = predictor.predict(**stack_prompts(prompts)).best()
    return masks, iou


def propagate_from(embedder: SliceEmbedder, start_z: int, start_prompt: Prompt, min_area: int = 20,
                   margin: float = 0.0, min_iou: float = 0.0, trace: list | None = None,
                   steps: tuple[int, ...] = (1, -1), stop_at: Collection[int] = ()) -> np.ndarray:
    """Bool mask (Z, H, W): predict on ``start_z``, then the 3D engine's plain walk (``VolumeEngine.walk`` with
    ``EngineSettings.plain``) slice by slice up and down, each prompted with the box of the previous slice's
    answer grown by ``margin`` px. A direction stops at the first answer below ``min_area`` px or with
    predicted IoU below ``min_iou`` (that slice stays empty), or at the volume's end. ``trace`` (a list)
    receives ``(z, area_px, predicted_iou, kept)`` for every slice visited. ``steps``: the directions to walk
    (+1 up, -1 down); ``stop_at``: slices never entered (a person's corrections, which the annotator keeps).
    """
    z_count, h, w = embedder.image01.shape
    if not 0 <= start_z < z_count:
        raise InputError(f"start slice {start_z} is outside the volume (0..{z_count - 1})")
    engine = VolumeEngine(embedder, EngineSettings.plain(min_area, min_iou, margin))
    masks, iou = predict_prompts(embedder.use(start_z), [start_prompt])
    # A box-trained model segments *something* in any box, so a predicted-IoU floor is the only
    # generic sign that the object has ended (see the module docstring).
    kept = not engine.ended(masks[0], float(iou[0]), masks[0])
    if trace is not None:
        trace.append((start_z, int(masks[0].sum()), round(float(iou[0]), 4), kept))
    if not kept:
        return np.zeros((z_count, h, w), dtype=bool)
    out = engine.walk(start_z, masks[0], steps, stop_at)
    if trace is not None:
        trace.extend(walk_trace(engine.trace))
    return out


def walk_trace(events: list[dict]) -> list[tuple[int, int, float, bool]]:
    """The engine's trace of a plain walk as ``(z, area_px, predicted_iou, kept)`` per slice visited."""
    return [(e["z"], e["area"], e["iou"], e["event"] != "ended") for e in events]


def largest_slice(mask: np.ndarray) -> int:
    """Index of the slice where ``mask`` (Z, H, W) has the most voxels (the first of ties)."""
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if not areas.any():
        raise InputError("cannot choose a start slice: the class is empty")
    return int(areas.argmax())


def parse_box_slice(text: str) -> BoxSlice:
    """``'z,x0,y0,x1,y1'`` (voxel indices: slice z of the [z, y, x] array) -> a BoxSlice."""
    try:
        vals = [float(v) for v in str(text).split(",")]
    except ValueError:
        vals = []
    if len(vals) != 5 or vals[0] != int(vals[0]):
        raise InputError(f"box slice {text!r} must be z,x0,y0,x1,y1 (an integer slice then four numbers)")
    return (int(vals[0]), vals[1], vals[2], vals[3], vals[4])


def check_box_slice(box_slice: BoxSlice, shape: tuple[int, int, int], source: str) -> tuple[int, np.ndarray]:
    """(z, box) of a BoxSlice checked against a (Z, Y, X) volume shape (InputError naming ``source``)."""
    z, *box = box_slice
    z = int(z)
    if not 0 <= z < shape[0]:
        raise InputError(f"{source}: box slice {z} is outside the volume (0..{shape[0] - 1})")
    h, w = shape[1:]
    x0, y0, x1, y1 = box
    if not (0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h):
        raise InputError(f"{source}: box {box} must satisfy 0 <= x0 <= x1 < {w} and 0 <= y0 <= y1 < {h}")
    return z, np.asarray(box, dtype=np.float32)
