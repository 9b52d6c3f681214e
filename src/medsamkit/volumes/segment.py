"""Segmenting a volume with a 2D SAM-family model: slice-wise prompting or propagation, and segment-volume.

Slice-wise: every labelled slice gets one prompt per class from that slice's class mask. Propagation
(``medsamkit.volumes.propagate``): one prompt on a start slice (a given box, or each class's largest
slice), then box by box up and down. Only the slices that need it are encoded; embeddings are shared across
classes and prompt modes through one `SliceEmbedder` per volume and input kind.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.core.seeds import name_key, object_rng
from medsamkit.metrics import dice
from medsamkit.predictor import Predictor
from medsamkit.prompts import Prompt, PromptMode, initial_prompt, parse_modes
from medsamkit.volumes.engine import EngineSettings, VolumeEngine, parse_box3d
from medsamkit.volumes.propagate import (
    BoxSlice,
    check_box_slice,
    largest_slice,
    parse_box_slice,
    predict_prompts,
    propagate_from,
)
from medsamkit.volumes.scores import present_classes
from medsamkit.volumes.slices import SliceEmbedder

Classes = Iterable[int] | str | None


def parse_class_list(classes: Classes) -> list[int] | None:
    """Label values to process from a comma list ('1,3') or integers; None: all."""
    if classes is None or isinstance(classes, str):
        from medsamkit.core.objects import parse_classes  # the one --classes parser

        parsed = parse_classes(classes)
        return sorted(parsed) if parsed is not None else None
    return sorted({int(c) for c in classes})


def one_mode(prompts: str | PromptMode) -> PromptMode:
    """The single, non-interactive prompt mode of one label map (a comma list must name one mode)."""
    if isinstance(prompts, PromptMode):
        mode = prompts
    else:
        modes = parse_modes(prompts)
        if len(modes) != 1:
            raise InputError(f"--prompts {prompts!r}: one label map takes one prompt mode; "
                             "compare modes with evaluate-volume")
        mode = modes[0]
    if mode.interactive:
        raise InputError(f"prompt mode {mode.name} is interactive; volumes take box, box+K, jitter+K, center, "
                         "randomN")
    return mode


def _paint(out: np.ndarray, mask: np.ndarray, value: int) -> None:
    # Ascending class order, later classes on top: the output never holds a value not in the input.
    out[mask] = value


def prompted_slices(label: np.ndarray, classes: list[int], min_area: int = 20) -> list[int]:
    """The slices slice-wise prompting runs on: those where a class covers at least ``min_area`` px."""
    areas = np.stack([(label == v).sum(axis=(1, 2)) for v in classes]) if classes else np.zeros((1, len(label)))
    return [int(z) for z in np.flatnonzero((areas >= max(min_area, 1)).any(axis=0))]


def segment_slicewise(embedder: SliceEmbedder, label: np.ndarray, mode: PromptMode, classes: list[int],
                      min_area: int = 20, seed: int = 0, volume_key: int = 0) -> np.ndarray:
    """One prompt per (labelled slice, class) from that slice's class mask; classes smaller than
    ``min_area`` px on a slice are not prompted (they still count as truth in the scores)."""
    out = np.zeros(label.shape, dtype=label.dtype)
    for z in prompted_slices(label, classes, min_area):
        todo = []
        for v in classes:
            mask = label[z] == v
            if int(mask.sum()) >= max(min_area, 1):
                todo.append((v, initial_prompt(mode, mask, object_rng(seed, volume_key, z, v), mask.shape)))
        masks, _ = predict_prompts(embedder.use(z), [p for _, p in todo])
        for (v, _), m in zip(todo, masks):
            _paint(out[z], m, v)
    return out


def _embedder_for(predictor: Predictor | SliceEmbedder, image01: np.ndarray, three_slice: bool,
                  source: str) -> SliceEmbedder:
    if not isinstance(predictor, SliceEmbedder):
        return SliceEmbedder(predictor, image01, three_slice, source)
    if predictor.image01.shape != image01.shape or predictor.three_slice != three_slice:
        raise InputError(f"{source or 'volume'}: the SliceEmbedder was made for another volume or input")
    return predictor


def _checked_label(label: np.ndarray | None, image01: np.ndarray, source: str) -> np.ndarray:
    if label is None:
        raise InputError(f"{source or 'volume'}: give a label volume or a box slice to prompt from")
    label = np.asarray(label)
    if label.shape != image01.shape:
        raise InputError(f"{source or 'volume'}: label shape {label.shape} does not match image shape "
                         f"{image01.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        raise InputError(f"{source or 'volume'}: label volume must hold integer class values")
    return label


def segment_volume(
    predictor: Predictor | SliceEmbedder,
    image01: np.ndarray,
    label: np.ndarray | None = None,
    box_slice: BoxSlice | None = None,
    prompts: str | PromptMode = "box",
    propagate: bool = False,
    three_slice: bool = False,
    classes: Classes = None,
    min_area: int = 20,
    margin: float = 0.0,
    seed: int = 0,
    source: str = "",
    min_iou: float = 0.0,
) -> np.ndarray:
    """Label volume (Z, Y, X) predicted for ``image01`` (float [0, 1], Z, Y, X); class values are kept.

    ``box_slice`` (z, x0, y0, x1, y1): propagate that box from slice z, output value 1. Otherwise
    ``label`` drives the prompts: slice-wise, or with ``propagate`` one propagation per class from
    its largest slice, started with the ``prompts`` mode (box+K enlarges the start box only); ``margin`` px
    are added to each propagated box, ``min_iou`` stops propagation at a low predicted IoU. Pass a
    `SliceEmbedder` to share encoder passes between calls.
    """
    image01 = np.asarray(image01)
    if image01.ndim != 3:
        raise InputError(f"{source or 'volume'}: expected a (Z, Y, X) volume, got shape {image01.shape}")
    mode = one_mode(prompts)
    embedder = _embedder_for(predictor, image01, three_slice, source)
    if box_slice is not None:
        z, box = check_box_slice(box_slice, image01.shape, source or "volume")
        return propagate_from(embedder, z, Prompt(box=box), min_area, margin, min_iou).astype(np.uint8)
    label = _checked_label(label, image01, source)
    present = present_classes(label, parse_class_list(classes))
    key = name_key(source)
    if not propagate:
        return segment_slicewise(embedder, label, mode, present, min_area, seed, key)
    out = np.zeros(label.shape, dtype=label.dtype)
    for v in present:
        truth = label == v
        z = largest_slice(truth)
        start = initial_prompt(mode, truth[z], object_rng(seed, key, z, v), truth.shape[1:])
        _paint(out, propagate_from(embedder, z, start, min_area, margin, min_iou), v)
    return out


@dataclass
class SegmentVolumeConfig:
    """Inputs of `medsamkit segment-volume`."""

    volume: str
    out: str
    label: str | None = None
    box_slice: str | None = None
    box3d: str | None = None  # z_min,z_max,z,x0,y0,x1,y1: a 3D box answered by the 3D engine (volumes.engine)
    prompts: str = "box"
    propagate: bool = False
    three_slice: bool = False
    window: str | None = None
    classes: list[int] | str | None = None  # label values to segment (a list or a comma list); None: all
    min_area: int = 20
    margin: float = 0.0
    min_iou: float = 0.0
    seed: int = 0
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    cache: str | None = None  # embedding cache folder (medsamkit.embedding.cache)
    show_progress: bool = True


def class_summary(pred: np.ndarray, label: np.ndarray | None, classes: list[int] | None) -> dict:
    """Per class value of the prediction (and the label): voxels, slices, Dice against the label if given."""
    values = {int(x) for x in np.unique(pred) if x != 0}
    if label is not None:
        values |= set(present_classes(label, classes))
    entries = {}
    for v in sorted(values):
        entry = {"voxels": int((pred == v).sum()), "slices": int((pred == v).any((1, 2)).sum())}
        if label is not None:
            entry["dice"] = round(dice(pred == v, label == v), 4)  # against the label that gave the prompts
        entries[str(v)] = entry
    return entries


def run_segment_volume(cfg: SegmentVolumeConfig, predictor: Predictor | None = None) -> dict:
    """Read the volume (and label), segment, write ``cfg.out`` as NIfTI on the input's grid; return a summary.

    With a label, the summary also gives each class's per-volume Dice against it.
    """
    from medsamkit.io.volume_data import to_unit_range
    from medsamkit.io.volume_reader import read_label_volume, read_volume
    from medsamkit.io.windowing import parse_window
    from medsamkit.volumes.masks import write_label_map

    if not str(cfg.out).lower().endswith((".nii", ".nii.gz")):
        raise InputError(f"{cfg.out}: output must be a NIfTI file (.nii or .nii.gz)")
    if cfg.box_slice is None and cfg.label is None and cfg.box3d is None:
        raise InputError(f"{cfg.volume}: give --label LABEL, --box-slice z,x0,y0,x1,y1 or --box3d "
                         "z_min,z_max,z,x0,y0,x1,y1")
    if cfg.box3d is not None and (cfg.box_slice is not None or cfg.label is not None):
        raise InputError(f"{cfg.volume}: --box3d is a prompt of its own; give it without --label or --box-slice")
    box3d = parse_box3d(cfg.box3d) if cfg.box3d is not None else None
    box_slice = parse_box_slice(cfg.box_slice) if cfg.box_slice is not None else None
    mode, classes = one_mode(cfg.prompts), parse_class_list(cfg.classes)
    volume = read_volume(cfg.volume)
    image01 = to_unit_range(volume, parse_window(cfg.window))
    label = read_label_volume(cfg.label, volume).array if cfg.label is not None else None
    if predictor is None:
        from medsamkit.core.runtime import select_device
        from medsamkit.models import load_model

        predictor = Predictor(load_model(cfg.model, cfg.checkpoint, select_device(cfg.device)))
    slicewise = label is not None and not cfg.propagate
    total = len(prompted_slices(label, present_classes(label, classes), cfg.min_area)) if slicewise else None
    embedder = SliceEmbedder(predictor, image01, cfg.three_slice, str(cfg.volume), show_progress=cfg.show_progress,
                             cache=cfg.cache, total=total)
    start = time.perf_counter()
    if box3d is not None:
        engine = VolumeEngine(embedder, EngineSettings(min_iou=cfg.min_iou))
        pred = engine.start(box3d.check(image01.shape, str(cfg.volume))).astype(np.uint8)
    else:
        pred = segment_volume(embedder, image01, label, box_slice, mode, cfg.propagate or box_slice is not None,
                              cfg.three_slice, classes, cfg.min_area, cfg.margin, cfg.seed, str(cfg.volume),
                              cfg.min_iou)
    seconds = time.perf_counter() - start
    write_label_map(pred, cfg.out, like=volume)
    embedder.close()
    summary = {"out": str(cfg.out), "shape": list(pred.shape), "encoded_slices": len(embedder.encoded),
               "seconds": round(seconds, 2), "classes": class_summary(pred, label, classes)}
    if embedder.cache is not None:
        summary["cache"] = dict(embedder.cache.stats)
    return summary
